package goldclone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// failingWriter takes `room` bytes and then fails.
type failingWriter struct{ room int }

var errWriterBroke = errors.New("the connection broke")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.room {
		return 0, errWriterBroke
	}
	w.room -= len(p)
	return len(p), nil
}

// failingReader gives `data` and then fails.
type failingReader struct{ data []byte }

var errReaderBroke = errors.New("the download broke")

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errReaderBroke
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// stallingReader gives `data`, then says so on `stalled` and blocks until `release` closes.
type stallingReader struct {
	data    []byte
	stalled chan struct{}
	release chan struct{}
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		close(r.stalled)
		<-r.release
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// A generation sent to an io.Writer comes back through an io.Reader as the next generation,
// with progress; a truncated stream, a failing writer or reader, another project's stream and
// a cancelled context are each a matching error that changes nothing.
func TestSendReceive(t *testing.T) {
	for _, f := range filesystems(t) {
		t.Run(f.name, func(t *testing.T) {
			root, srcDir := cacheRoot(t, f)
			project := "go-send-" + time.Now().Format("150405.000000")
			first := filepath.Join(srcDir, "first")
			writeFile(t, filepath.Join(first, "v"), "1")
			writeFile(t, filepath.Join(first, "sub", "data"), string(bytes.Repeat([]byte("x"), 3<<20)))
			second := filepath.Join(srcDir, "second")
			writeFile(t, filepath.Join(second, "v"), "2")
			c, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Send(context.Background(), project, 0, 0, io.Discard, nil); !errors.Is(err, ErrNotFound) {
				t.Fatalf("send of an unknown project: %v", err)
			}
			if _, err := c.Import(project, first); err != nil {
				t.Fatal(err)
			}
			var stream bytes.Buffer
			var last, total int64
			sent, err := c.Send(context.Background(), project, 0, 0, &stream, func(n, all int64) { last, total = n, all })
			if err != nil {
				t.Fatal(err)
			}
			if sent.Generation != 1 || sent.StreamBytes != uint64(stream.Len()) || sent.Bytes != 3<<20+1 {
				t.Fatalf("sent %+v, stream of %d bytes", sent, stream.Len())
			}
			if total != int64(sent.Bytes) || last != total {
				t.Errorf("progress: last report %d of %d, sent %d", last, total, sent.Bytes)
			}
			_, err = c.Send(context.Background(), project, 0, 0, &failingWriter{room: 1 << 20}, nil)
			if !errors.Is(err, errWriterBroke) {
				t.Fatalf("a failing writer: %v", err)
			}
			if _, err := c.ImportNext(context.Background(), project, second, nil); err != nil {
				t.Fatal(err)
			}
			// Generation 2 as an increment from 1 (its send kept its manifest); from 2 itself
			// is no increment.
			if _, err := c.Send(context.Background(), project, 0, 2, io.Discard, nil); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("an increment from itself: %v", err)
			}
			var inc bytes.Buffer
			if sent, err := c.Send(context.Background(), project, 0, 1, &inc, nil); err != nil || sent.Generation != 2 || inc.Len() >= 1<<20 {
				t.Fatalf("an increment: %+v (%d bytes), %v", sent, inc.Len(), err)
			}
			// Onto generation 2 itself it changes nothing.
			if g, err := c.Receive(context.Background(), project, bytes.NewReader(inc.Bytes()), nil); err != nil || g != 2 {
				t.Fatalf("generation 2 received onto itself: %d, %v", g, err)
			}
			whole := stream.Bytes()
			for _, bad := range []io.Reader{
				bytes.NewReader(whole[:len(whole)-1]),
				bytes.NewReader(whole[:len(whole)/2]),
				bytes.NewReader([]byte("garbage")),
			} {
				if _, err := c.Receive(context.Background(), project, bad, nil); !errors.Is(err, ErrBadStream) {
					t.Fatalf("a truncated stream: %v", err)
				}
			}
			_, err = c.Receive(context.Background(), project, &failingReader{data: whole[:len(whole)/2]}, nil)
			if !errors.Is(err, errReaderBroke) || !errors.Is(err, ErrBadStream) {
				t.Fatalf("a failing reader: %v", err)
			}
			if _, err := c.Receive(context.Background(), "someone-else", bytes.NewReader(whole), nil); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("another project's stream: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := c.Receive(ctx, project, bytes.NewReader(whole), nil); !errors.Is(err, ErrCancelled) {
				t.Fatalf("a cancelled receive: %v", err)
			}
			// A connection that stalls halfway: cancelling ctx ends the receive (the library is
			// blocked reading), and nothing is committed.
			stall := &stallingReader{data: whole[:len(whole)/2], stalled: make(chan struct{}), release: make(chan struct{})}
			ctx, cancel = context.WithCancel(context.Background())
			go func() { <-stall.stalled; cancel() }()
			_, err = c.Receive(ctx, project, stall, nil)
			close(stall.release)
			if !errors.Is(err, ErrCancelled) && !errors.Is(err, ErrBadStream) {
				t.Fatalf("a stalled receive, cancelled: %v", err)
			}
			if info, err := c.Info(project); err != nil || info.Generation != 2 {
				t.Fatalf("after the failed receives: %+v, %v", info, err)
			}
			g, err := c.Receive(context.Background(), project, bytes.NewReader(whole), nil)
			if err != nil || g != 3 {
				t.Fatalf("receive: %d, %v", g, err)
			}
			s, err := c.SetupSession(project, "s")
			if err != nil {
				t.Fatal(err)
			}
			if readFile(t, filepath.Join(s, "v")) != "1" || len(readFile(t, filepath.Join(s, "sub", "data"))) != 3<<20 {
				t.Fatal("the received generation is not the sent one")
			}
			if err := c.CleanupSession(project, "s"); err != nil {
				t.Fatal(err)
			}
			// Generation 3 is generation 1 received: the increment from 1 goes onto it.
			g, err = c.Receive(context.Background(), project, bytes.NewReader(inc.Bytes()), nil)
			if err != nil || g != 4 {
				t.Fatalf("receive of the increment: %d, %v", g, err)
			}
			if s, err = c.SetupSession(project, "s"); err != nil {
				t.Fatal(err)
			}
			if readFile(t, filepath.Join(s, "v")) != "2" {
				t.Fatal("the increment did not make generation 2's tree")
			}
			if _, err := os.Stat(filepath.Join(s, "sub")); !os.IsNotExist(err) {
				t.Fatalf("the increment left what generation 2 removed: %v", err)
			}
			if err := c.CleanupSession(project, "s"); err != nil {
				t.Fatal(err)
			}
			if err := c.DeleteProject(project); err != nil {
				t.Fatal(err)
			}
		})
	}
}
