package sshx

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"strings"

	"github.com/pkg/sftp"
)

// maxPacket is the SFTP write size. OpenSSH rejects packets above 64 KiB
// and 32 KiB is what every server must accept.
const maxPacket = 32 << 10

// sftpClient returns the Client's SFTP session, opening it on first use.
func (c *Client) sftpClient() (*sftp.Client, error) {
	c.sftpMu.Lock()
	defer c.sftpMu.Unlock()
	if c.sftp != nil {
		return c.sftp, nil
	}
	select {
	case <-c.done:
		return nil, errors.New("client is closed")
	default:
	}
	sc, err := sftp.NewClient(c.conn, sftp.MaxPacket(maxPacket), sftp.UseConcurrentWrites(true))
	if err != nil {
		return nil, fmt.Errorf("start sftp: %w", c.why(err))
	}
	c.sftp = sc
	return sc, nil
}

// Upload writes r to remotePath with the given mode, atomically: readers of
// remotePath see the old file or the complete new one, never a part, and a
// running executable at remotePath can be replaced. The data's SHA-256 is
// checked on the node before the rename.
//
// SFTP has no cancellation; ctx is checked between reads of r, and a dead
// link is cut by the keepalive.
func (c *Client) Upload(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) error {
	if err := c.upload(ctx, r, remotePath, mode); err != nil {
		return fmt.Errorf("upload %s to node %s: %w", remotePath, c.addr, err)
	}
	return nil
}

func (c *Client) upload(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) (err error) {
	h := sha256.New()
	tmp, err := c.stage(ctx, io.TeeReader(r, h), remotePath, mode)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.removeStaged(tmp)
		}
	}()
	want := hex.EncodeToString(h.Sum(nil))
	got, err := c.sha256(ctx, tmp)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if got != want {
		return fmt.Errorf("checksum mismatch: sent sha256 %s, node has %s", want, got)
	}
	// posix-rename replaces the target atomically; plain SFTP rename
	// refuses to overwrite.
	sc, err := c.sftpClient()
	if err == nil {
		err = sc.PosixRename(tmp, remotePath)
	}
	if err != nil {
		return fmt.Errorf("rename into place: %w", c.why(err))
	}
	return nil
}

// stage writes r to a new temporary file beside remotePath, with mode, and
// returns its path; it removes the file if writing fails.
func (c *Client) stage(ctx context.Context, r io.Reader, remotePath string, mode os.FileMode) (tmp string, err error) {
	if err := ctx.Err(); err != nil {
		return "", context.Cause(ctx)
	}
	sc, err := c.sftpClient()
	if err != nil {
		return "", err
	}
	// Same directory, so the rename stays on one file system and is atomic.
	tmp = path.Join(path.Dir(remotePath), "."+path.Base(remotePath)+".tmp-"+strings.ToLower(rand.Text()[:12]))
	f, err := sc.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return "", fmt.Errorf("create temporary file: %w", c.why(err))
	}
	defer func() {
		if err != nil {
			c.removeStaged(tmp)
		}
	}()
	// Chmod before writing, so a 0600 file never holds data with wider
	// permissions.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return "", fmt.Errorf("chmod temporary file: %w", c.why(err))
	}
	// File.ReadFrom only pipelines writes when it can tell the size; an
	// unlimited LimitedReader asks for the full concurrency.
	_, err = f.ReadFrom(&io.LimitedReader{R: ctxReader{ctx, r}, N: math.MaxInt64})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return "", context.Cause(ctx)
		}
		return "", fmt.Errorf("write: %w", c.why(err))
	}
	return tmp, nil
}

// removeStaged removes a temporary file, best effort: it is hidden and
// named as such, and the caller is already reporting a failure.
func (c *Client) removeStaged(tmp string) {
	if sc, err := c.sftpClient(); err == nil {
		_ = sc.Remove(tmp)
	}
}

// WriteFile writes data to remotePath atomically, as Upload does.
func (c *Client) WriteFile(ctx context.Context, remotePath string, data []byte, mode os.FileMode) error {
	return c.Upload(ctx, bytes.NewReader(data), remotePath, mode)
}

// ReadFile returns the content of remotePath. A missing file gives an
// error matching fs.ErrNotExist.
func (c *Client) ReadFile(ctx context.Context, remotePath string) ([]byte, error) {
	data, err := c.readFile(ctx, remotePath)
	if err != nil {
		return nil, fmt.Errorf("read %s on node %s: %w", remotePath, c.addr, err)
	}
	return data, nil
}

func (c *Client) readFile(ctx context.Context, remotePath string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	sc, err := c.sftpClient()
	if err != nil {
		return nil, err
	}
	f, err := sc.Open(remotePath)
	if err != nil {
		return nil, c.why(err)
	}
	defer f.Close()
	data, err := io.ReadAll(ctxReader{ctx, f})
	if err != nil {
		return nil, c.why(err)
	}
	return data, nil
}

// MkdirAll creates dir and its missing parents on the node.
func (c *Client) MkdirAll(ctx context.Context, dir string) error {
	err := ctx.Err()
	var sc *sftp.Client
	if err == nil {
		sc, err = c.sftpClient()
	}
	if err == nil {
		err = c.why(sc.MkdirAll(dir))
	}
	if err != nil {
		return fmt.Errorf("create directory %s on node %s: %w", dir, c.addr, err)
	}
	return nil
}

// SHA256 returns the hex SHA-256 of remotePath, computed on the node by
// sha256sum. A missing file gives "" and an error matching fs.ErrNotExist.
func (c *Client) SHA256(ctx context.Context, remotePath string) (string, error) {
	sum, err := c.sha256(ctx, remotePath)
	if err != nil {
		return "", fmt.Errorf("sha256 of %s on node %s: %w", remotePath, c.addr, err)
	}
	return sum, nil
}

func (c *Client) sha256(ctx context.Context, remotePath string) (string, error) {
	var out bytes.Buffer
	err := c.run(ctx, []string{"sha256sum", "--", remotePath}, nil, &out, nil)
	var exit *ExitError
	if errors.As(err, &exit) {
		// Tell "missing" apart from other failures without parsing
		// sha256sum's localised messages.
		if sc, serr := c.sftpClient(); serr == nil {
			if _, serr := sc.Stat(remotePath); errors.Is(serr, fs.ErrNotExist) {
				return "", fs.ErrNotExist
			}
		}
	}
	if err != nil {
		return "", err
	}
	// GNU sha256sum marks lines for names with odd characters with "\".
	sum, _, _ := strings.Cut(strings.TrimPrefix(out.String(), `\`), " ")
	if len(sum) != sha256.Size*2 {
		return "", fmt.Errorf("unexpected sha256sum output %q", out.String())
	}
	return sum, nil
}

// ctxReader stops a copy at the next read once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, context.Cause(r.ctx)
	}
	return r.r.Read(p)
}
