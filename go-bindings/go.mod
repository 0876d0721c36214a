module goldclone.dev/goldclone

go 1.21
