module goldclone.dev/goldclone

go 1.19
