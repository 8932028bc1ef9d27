package mcp

// files_write, files_read and files_list over the guest agent's file RPCs.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/mvm-sandbox/mvm/internal/runtime"
)

func (s *Server) filesWrite(ctx context.Context, a FilesWriteArgs) (FilesWriteResult, string, error) {
	var zero FilesWriteResult
	var data []byte
	switch {
	case a.Content != "" && a.ContentBase64 != "":
		return zero, "", errors.New("give content (text) or content_base64 (bytes), not both")
	case a.ContentBase64 != "":
		if len(a.ContentBase64) > MaxWriteBytes/3*4+8 {
			return zero, "", fmt.Errorf("content_base64 decodes to more than %d bytes", MaxWriteBytes)
		}
		b, err := decodeBase64(a.ContentBase64)
		if err != nil {
			return zero, "", err
		}
		data = b
	default:
		data = []byte(a.Content)
	}
	if len(data) > MaxWriteBytes {
		return zero, "", fmt.Errorf("content is %d bytes, more than %d", len(data), MaxWriteBytes)
	}
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	resp, err := s.rt.FsWrite(ctx, b.id, a.Path, bytes.NewReader(data), runtime.FsWriteOptions{Parents: true})
	if err != nil {
		return zero, "", toolError(op{file: "write", path: a.Path}, err)
	}
	n := int64(len(data))
	if resp != nil && resp.Bytes > 0 {
		n = resp.Bytes
	}
	path := a.Path
	if resp != nil && resp.Info.Path != "" {
		path = resp.Info.Path
	}
	return FilesWriteResult{Sandbox: b.handle, Path: path, Bytes: n}, fmt.Sprintf("wrote %d bytes to %s in sandbox %s", n, path, b.handle), nil
}

// errEnough stops a read once max_bytes are kept.
var errEnough = errors.New("enough bytes")

type limitWriter struct {
	buf   bytes.Buffer
	limit int
	hit   bool
}

func (w *limitWriter) Write(p []byte) (int, error) {
	room := w.limit - w.buf.Len()
	if len(p) <= room {
		return w.buf.Write(p)
	}
	w.buf.Write(p[:max(room, 0)])
	w.hit = true
	return max(room, 0), errEnough
}

func (s *Server) filesRead(ctx context.Context, a FilesReadArgs) (FilesReadResult, string, error) {
	var zero FilesReadResult
	limit := a.MaxBytes
	switch {
	case limit == 0:
		limit = DefaultReadBytes
	case limit < 0 || limit > MaxReadBytes:
		return zero, "", fmt.Errorf("max_bytes %d: must be between 1 and %d", limit, MaxReadBytes)
	}
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	fi, err := s.rt.FsStat(ctx, b.id, a.Path)
	if err != nil {
		return zero, "", toolError(op{file: "read", path: a.Path}, err)
	}
	if fi.Type == "dir" {
		return zero, "", fmt.Errorf("read %s: is a directory; use files_list", a.Path)
	}
	w := &limitWriter{limit: limit}
	_, err = s.rt.FsRead(ctx, b.id, a.Path, w)
	if err != nil && !w.hit {
		return zero, "", toolError(op{file: "read", path: a.Path}, err)
	}
	data := w.buf.Bytes()
	res := FilesReadResult{Sandbox: b.handle, Path: fi.Path, Size: fi.Size, Bytes: int64(len(data)),
		Truncated: w.hit || int64(len(data)) < fi.Size}
	if res.Path == "" {
		res.Path = a.Path
	}
	text := data
	if res.Truncated {
		text = trimPartialRune(data)
	}
	var msg string
	if utf8.Valid(text) {
		res.Content = string(text)
		res.Bytes = int64(len(text))
		msg = fmt.Sprintf("%s (%d bytes):\n%s", res.Path, res.Size, res.Content)
	} else {
		res.ContentBase64 = encodeBase64(data)
		msg = fmt.Sprintf("%s (%d bytes) is not UTF-8 text; returned as content_base64", res.Path, res.Size)
	}
	if res.Truncated {
		msg += fmt.Sprintf("\n[truncated: %d of %d bytes returned; raise max_bytes (at most %d) for more]", res.Bytes, res.Size, MaxReadBytes)
	}
	return res, msg, nil
}

func (s *Server) filesList(ctx context.Context, a FilesListArgs) (FilesListResult, string, error) {
	var zero FilesListResult
	b, err := s.acquire(a.Sandbox)
	if err != nil {
		return zero, "", err
	}
	defer s.release(b)
	ls, err := s.rt.FsList(ctx, b.id, a.Path)
	if err != nil {
		return zero, "", toolError(op{file: "list", path: a.Path}, err)
	}
	res := FilesListResult{Sandbox: b.handle, Path: a.Path, Entries: []FileEntry{}, Truncated: ls.Truncated}
	var t strings.Builder
	fmt.Fprintf(&t, "%s in sandbox %s:\n", a.Path, b.handle)
	for _, e := range ls.Entries {
		fe := FileEntry{Name: e.Name, Type: e.Type, Size: e.Size, Mode: fmt.Sprintf("%04o", e.Mode),
			Modified: e.Mtime.UTC(), LinkTarget: e.LinkTarget}
		res.Entries = append(res.Entries, fe)
		name := fe.Name
		if fe.Type == "dir" {
			name += "/"
		} else if fe.LinkTarget != "" {
			name += " -> " + fe.LinkTarget
		}
		fmt.Fprintf(&t, "%-7s %s %10d  %s\n", fe.Type, fe.Mode, fe.Size, name)
	}
	if len(res.Entries) == 0 {
		t.WriteString("(empty)\n")
	}
	if res.Truncated {
		fmt.Fprintf(&t, "[truncated: the directory has more than %d entries]\n", len(res.Entries))
	}
	return res, t.String(), nil
}
