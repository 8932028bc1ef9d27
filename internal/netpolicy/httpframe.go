package netpolicy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
)

// HTTP/1.x framing of the guest's side of a plain-HTTP connection.
//
// A kept-alive connection carries many requests, and each may name a
// different Host: a front end shared by many sites (a CDN) routes each
// request by its own Host. So the proxy reads the guest's stream request
// by request (header block, then exactly the body its Content-Length or
// chunked encoding announces) and checks every request before it is
// forwarded. Anything it cannot frame unambiguously ends the connection.

// Refusal reasons of framed requests.
const (
	ReasonUpgrade = "upgrade_refused"
)

// maxChunkLine bounds a chunk-size line (with extensions) and a trailer
// line.
const maxChunkLine = 4096

// httpRequest is what the proxy needs of one request header block.
type httpRequest struct {
	host          string
	port          int
	contentLength int64 // -1: none
	chunked       bool
	upgrade       bool
}

var errFrame = errors.New("cannot frame request")

// parseRequestHeader parses one complete header block (request line and
// header fields, ending with the empty line). It applies ParseHTTPHost's
// rules and the body-length rules of RFC 9112 section 6, refusing every
// ambiguity a smuggling attack needs.
func parseRequestHeader(block []byte) (httpRequest, error) {
	req := httpRequest{contentLength: -1}
	host, port, err := ParseHTTPHost(block)
	if err != nil {
		return req, err
	}
	req.host, req.port = host, port
	end := bytes.Index(block, []byte("\r\n\r\n"))
	lines := strings.Split(string(block[:end]), "\r\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "content-length":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || strings.TrimLeft(v, "0123456789") != "" {
				return req, ErrMalformed
			}
			if req.contentLength >= 0 && req.contentLength != n {
				return req, ErrMalformed
			}
			req.contentLength = n
		case "transfer-encoding":
			if req.chunked || !strings.EqualFold(v, "chunked") {
				return req, ErrMalformed // only a single "chunked" is framed
			}
			req.chunked = true
		case "upgrade":
			req.upgrade = true
		case "connection":
			for _, t := range strings.Split(v, ",") {
				if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
					req.upgrade = true
				}
			}
		case "http2-settings":
			req.upgrade = true // h2c
		}
	}
	if req.chunked && req.contentLength >= 0 {
		return req, ErrMalformed
	}
	return req, nil
}

// readHeaderBlock reads one request header block from r, at most MaxPeek
// bytes. io.EOF means the stream ended cleanly between requests.
func readHeaderBlock(r *bufio.Reader) ([]byte, error) {
	var block []byte
	for {
		line, err := r.ReadSlice('\n')
		block = append(block, line...)
		if len(block) > MaxPeek {
			return nil, ErrHeaderTooLarge
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF && len(block) == 0 {
				return nil, io.EOF
			}
			return nil, err
		}
		if bytes.HasSuffix(block, []byte("\r\n\r\n")) {
			return block, nil
		}
		if len(block) == 2 && string(block) == "\r\n" {
			// RFC 9112 2.2: an empty line before a request is ignored.
			block = block[:0]
		}
	}
}

// copyRequests forwards the HTTP/1.x requests the guest sends on src to
// dst, checking each: its Host must be name (and a port in it, port);
// Upgrade and h2c are refused. It returns when src ends (reason "") or a
// request is refused (the reason, and the name the refused request asked
// for). n counts the requests forwarded.
func copyRequests(dst io.Writer, src *bufio.Reader, name string, port int) (reason, requested string, n int, err error) {
	for {
		block, err := readHeaderBlock(src)
		if err == io.EOF {
			return "", "", n, nil
		}
		if err != nil {
			if errors.Is(err, ErrHeaderTooLarge) {
				return ReasonTooLarge, "", n, err
			}
			return "", "", n, err // the guest went away mid-header
		}
		req, err := parseRequestHeader(block)
		if err != nil {
			return peekReason(err), "", n, err
		}
		if req.host != name {
			return ReasonNameMismatch, req.host, n, errFrame
		}
		if req.port != 0 && req.port != port {
			return ReasonPortMismatch, "", n, errFrame
		}
		if req.upgrade {
			return ReasonUpgrade, "", n, errFrame
		}
		if _, err := dst.Write(block); err != nil {
			return "", "", n, err
		}
		switch {
		case req.chunked:
			if err := copyChunked(dst, src); err != nil {
				if errors.Is(err, ErrMalformed) {
					return ReasonMalformed, "", n, err
				}
				return "", "", n, err
			}
		case req.contentLength > 0:
			if _, err := io.CopyN(dst, src, req.contentLength); err != nil {
				return "", "", n, err
			}
		}
		n++
	}
}

// copyChunked forwards one chunked body: chunks, the last chunk and the
// trailer section.
func copyChunked(dst io.Writer, src *bufio.Reader) error {
	for {
		line, err := readLine(src)
		if err != nil {
			return err
		}
		size, _, _ := strings.Cut(strings.TrimRight(string(line), "\r\n"), ";")
		size = strings.TrimSpace(size)
		n, err := strconv.ParseUint(size, 16, 62)
		if err != nil || size == "" || len(size) > 15 {
			return ErrMalformed
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if _, err := io.CopyN(dst, src, int64(n)); err != nil {
			return err
		}
		crlf, err := readLine(src)
		if err != nil {
			return err
		}
		if string(crlf) != "\r\n" {
			return ErrMalformed
		}
		if _, err := dst.Write(crlf); err != nil {
			return err
		}
	}
	// Trailer fields, then the empty line.
	for total := 0; ; {
		line, err := readLine(src)
		if err != nil {
			return err
		}
		total += len(line)
		if total > MaxPeek {
			return ErrMalformed
		}
		if _, err := dst.Write(line); err != nil {
			return err
		}
		if string(line) == "\r\n" {
			return nil
		}
	}
}

// readLine reads one CRLF-terminated line of at most maxChunkLine bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		b, err := r.ReadSlice('\n')
		line = append(line, b...)
		if len(line) > maxChunkLine {
			return nil, ErrMalformed
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			return nil, ErrMalformed
		}
		return line, nil
	}
}
