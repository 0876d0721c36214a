// Command devcache is the dev-container service's golden-cache flow on goldclone, small: the
// first build imports a golden, sessions start from it with progress, a finished build is
// promoted (its session consumed, containers/ and network/ left out, a version file written
// before the commit), new sessions see it, and the project is deleted at the end. The Go tests
// run it on every backend (TestExampleProgram); MIGRATION.md maps the service's functions to
// these calls.
//
//	devcache -root ROOT -source DIR [-project ID]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"goldclone.dev/goldclone"
)

func main() {
	root := flag.String("root", "", "cache root (on ZFS: a dataset's mount point)")
	source := flag.String("source", "", "the first build's Docker data root, imported once")
	project := flag.String("project", "example", "project id")
	flag.Parse()
	if *root == "" || *source == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*root, *source, *project); err != nil {
		fmt.Fprintln(os.Stderr, "devcache:", err)
		os.Exit(1)
	}
}

func run(root, source, project string) error {
	cache, err := goldclone.Open(root)
	if err != nil {
		return err
	}
	defer cache.Close()
	backend, err := cache.Backend()
	if err != nil {
		return err
	}
	fmt.Printf("backend %s\n", backend)

	// IsGoldenCopyComplete + the first build: a golden exists only once it is committed.
	has, err := cache.HasGolden(project)
	if err != nil {
		return err
	}
	if !has {
		g, err := cache.Import(project, source)
		if err != nil {
			return err
		}
		fmt.Printf("imported generation %d\n", g)
	}

	// SetupGoldenCopy / SetupGoldenClone: one call on every backend, with progress and a
	// deadline (a stopped setup leaves nothing behind).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build, err := cache.SetupSessionContext(ctx, project, "build-1", func(copied, total int64) {
		if total >= 0 {
			fmt.Printf("Unpacking build cache (%d/%d bytes)\n", copied, total)
		} else {
			fmt.Printf("Unpacking build cache (%d bytes so far)\n", copied) // a snapshot: no total
		}
	})
	if err != nil {
		return err
	}
	fmt.Printf("session build-1 at %s\n", build)

	// The build: dockerd writes its state into the session (here: a layer and a container).
	if err := os.MkdirAll(filepath.Join(build, "overlay2", "new-layer", "diff"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(build, "containers", "c1"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(build, "containers", "c1", "config.v2.json"), []byte("{}"), 0o644); err != nil {
		return err
	}

	// PromoteSessionToGolden + PurgeContainersFromGolden: the quiesced session becomes the next
	// generation (a rename on the copy backend), without containers/ and network/, with a
	// version file written before anything is committed.
	g, err := cache.PromoteSessionWithOptions(ctx, project, "build-1", goldclone.PromoteOptions{
		Consume: true,
		Drop:    []string{"containers", "network"},
		Edit: func(tree string, generation uint64) error {
			return os.WriteFile(filepath.Join(tree, "golden-version"), []byte(fmt.Sprint(generation)), 0o644)
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("promoted build-1 to generation %d\n", g)
	if _, err := cache.SessionInfo(project, "build-1"); !errors.Is(err, goldclone.ErrNotFound) {
		return fmt.Errorf("the consumed session is still there: %v", err)
	}

	// A new session starts from the new generation.
	dev, err := cache.SetupSession(project, "dev-1")
	if err != nil {
		return err
	}
	version, err := os.ReadFile(filepath.Join(dev, "golden-version"))
	if err != nil {
		return err
	}
	_, statErr := os.Stat(filepath.Join(dev, "containers"))
	fmt.Printf("session dev-1: golden-version %s, new layer %v, containers/ %v\n", version,
		exists(filepath.Join(dev, "overlay2", "new-layer")), !errors.Is(statErr, os.ErrNotExist))
	info, err := cache.SessionInfo(project, "dev-1")
	if err != nil {
		return err
	}
	fmt.Printf("session dev-1: generation %d, in use %v\n", info.Generation, info.InUse)
	if err := cache.CleanupSession(project, "dev-1"); err != nil {
		return err
	}

	// DeleteGolden, then GCOrphanedSessionDirs.
	if err := cache.DeleteProject(project); err != nil {
		return err
	}
	if has, err := cache.HasGolden(project); err != nil || has {
		return fmt.Errorf("project still there after delete: %v %v", has, err)
	}
	report, err := cache.GC()
	if err != nil {
		return err
	}
	fmt.Printf("deleted %s; gc removed %d, kept %d\n", project, len(report.Removed), len(report.Kept))
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
