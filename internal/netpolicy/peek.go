package netpolicy

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// MaxPeek bounds what the proxy reads from the guest before it decides:
// a TLS ClientHello or an HTTP request header must fit.
const MaxPeek = 16 << 10

// Peek results that are not a decision yet or not a valid request.
var (
	errIncomplete     = errors.New("incomplete")
	ErrNotTLSOrHTTP   = errors.New("neither TLS nor HTTP")
	ErrNoSNI          = errors.New("TLS ClientHello without server name")
	ErrNoHost         = errors.New("HTTP request without a single Host header")
	ErrMalformed      = errors.New("malformed request")
	ErrHeaderTooLarge = errors.New("request header too large")
)

// Protocol names used in decisions.
const (
	ProtoTLS  = "tls"
	ProtoHTTP = "http"
	ProtoDNS  = "dns"
)

// sniff tells what buf starts with.
func sniff(buf []byte) string {
	if len(buf) == 0 {
		return ""
	}
	if buf[0] == 0x16 {
		return ProtoTLS
	}
	if buf[0] >= 'A' && buf[0] <= 'Z' {
		return ProtoHTTP
	}
	return "other"
}

// Inspect looks at the first bytes a guest sent on a connection. It
// returns the protocol and the destination name the guest asked for
// (SNI or Host, lowercased, without a port) and the port given in a Host
// header (0 if none). errIncomplete asks for more bytes.
func Inspect(buf []byte) (proto, host string, port int, err error) {
	switch sniff(buf) {
	case "":
		return "", "", 0, errIncomplete
	case ProtoTLS:
		h, err := ParseSNI(buf)
		return ProtoTLS, h, 0, err
	case ProtoHTTP:
		h, p, err := ParseHTTPHost(buf)
		return ProtoHTTP, h, p, err
	}
	return "", "", 0, ErrNotTLSOrHTTP
}

// ParseSNI extracts the server name from a TLS ClientHello, which may
// span several handshake records. errIncomplete asks for more bytes.
func ParseSNI(buf []byte) (string, error) {
	// Reassemble the handshake message from records.
	var hs []byte
	for off := 0; ; {
		if len(buf)-off < 5 {
			return "", errIncomplete
		}
		if buf[off] != 0x16 || buf[off+1] != 0x03 {
			return "", ErrMalformed
		}
		n := int(buf[off+3])<<8 | int(buf[off+4])
		if n == 0 || n > 1<<14 {
			return "", ErrMalformed
		}
		if len(buf)-off-5 < n {
			return "", errIncomplete
		}
		hs = append(hs, buf[off+5:off+5+n]...)
		off += 5 + n
		if len(hs) >= 4 {
			if hs[0] != 0x01 { // ClientHello
				return "", ErrMalformed
			}
			need := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if need > MaxPeek {
				return "", ErrHeaderTooLarge
			}
			if len(hs)-4 >= need {
				return parseClientHello(hs[4 : 4+need])
			}
		}
	}
}

// reader is a bounds-checked cursor.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || len(r.b) < n {
		r.bad = true
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u8() int {
	b := r.take(1)
	if b == nil {
		return 0
	}
	return int(b[0])
}

func (r *reader) u16() int {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return int(b[0])<<8 | int(b[1])
}

func parseClientHello(b []byte) (string, error) {
	r := &reader{b: b}
	r.take(2)       // legacy_version
	r.take(32)      // random
	r.take(r.u8())  // session id
	r.take(r.u16()) // cipher suites
	r.take(r.u8())  // compression methods
	if r.bad {
		return "", ErrMalformed
	}
	if len(r.b) == 0 {
		return "", ErrNoSNI // no extensions
	}
	ext := &reader{b: r.take(r.u16())}
	if r.bad {
		return "", ErrMalformed
	}
	sni := ""
	found := false
	for len(ext.b) > 0 {
		typ := ext.u16()
		data := ext.take(ext.u16())
		if ext.bad {
			return "", ErrMalformed
		}
		if typ != 0 { // server_name
			continue
		}
		if found {
			return "", ErrMalformed // duplicate extension
		}
		found = true
		d := &reader{b: data}
		list := &reader{b: d.take(d.u16())}
		if d.bad || len(d.b) != 0 {
			return "", ErrMalformed
		}
		for len(list.b) > 0 {
			nt := list.u8()
			name := list.take(list.u16())
			if list.bad {
				return "", ErrMalformed
			}
			if nt != 0 { // host_name
				continue
			}
			if sni != "" {
				return "", ErrMalformed // RFC 6066: one name per type
			}
			sni = string(name)
		}
	}
	if sni == "" {
		return "", ErrNoSNI
	}
	return normHost(sni)
}

// normHost lowercases a requested name and checks its syntax; a name the
// guest made up that is not a host name is malformed.
func normHost(h string) (string, error) {
	n, err := CanonicalName(h)
	if err != nil {
		return "", ErrMalformed
	}
	return n, nil
}

// ParseHTTPHost extracts the Host of the first HTTP/1.x request in buf.
// The whole header block must be present (errIncomplete otherwise).
// CONNECT, absolute-form targets naming another host and repeated Host
// headers are malformed.
func ParseHTTPHost(buf []byte) (string, int, error) {
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		if len(buf) >= MaxPeek {
			return "", 0, ErrHeaderTooLarge
		}
		// A bare request line that is already not HTTP fails early.
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if _, _, ok := requestLine(string(bytes.TrimRight(buf[:i], "\r"))); !ok {
				return "", 0, ErrNotTLSOrHTTP
			}
		} else if len(buf) > 8192 {
			return "", 0, ErrHeaderTooLarge
		}
		return "", 0, errIncomplete
	}
	lines := strings.Split(string(buf[:end]), "\r\n")
	method, target, ok := requestLine(lines[0])
	if !ok {
		return "", 0, ErrNotTLSOrHTTP
	}
	if method == "CONNECT" {
		return "", 0, ErrMalformed
	}
	host, port := "", 0
	for _, l := range lines[1:] {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			return "", 0, ErrMalformed // obsolete line folding
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok || strings.ContainsAny(k, " \t") {
			return "", 0, ErrMalformed
		}
		if !strings.EqualFold(k, "host") {
			continue
		}
		if host != "" {
			return "", 0, ErrNoHost
		}
		h, p, err := splitHostPort(strings.TrimSpace(v))
		if err != nil {
			return "", 0, err
		}
		host, port = h, p
	}
	if host == "" {
		return "", 0, ErrNoHost
	}
	if !strings.HasPrefix(target, "/") && target != "*" {
		// absolute-form: its authority must name the same host.
		rest, ok := strings.CutPrefix(strings.ToLower(target), "http://")
		if !ok {
			return "", 0, ErrMalformed
		}
		auth, _, _ := strings.Cut(rest, "/")
		if strings.Contains(auth, "@") {
			return "", 0, ErrMalformed
		}
		h, p, err := splitHostPort(auth)
		if err != nil || h != host || p != port {
			return "", 0, ErrMalformed
		}
	}
	return host, port, nil
}

func requestLine(l string) (method, target string, ok bool) {
	f := strings.Split(l, " ")
	if len(f) != 3 || !strings.HasPrefix(f[2], "HTTP/1.") || len(f[0]) == 0 || len(f[0]) > 16 {
		return "", "", false
	}
	for _, c := range f[0] {
		if c < 'A' || c > 'Z' {
			return "", "", false
		}
	}
	return f[0], f[1], f[1] != ""
}

func splitHostPort(v string) (string, int, error) {
	h, p := v, ""
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		h, p = v[:i], v[i+1:]
	}
	host, err := normHost(h)
	if err != nil {
		return "", 0, err
	}
	port := 0
	if p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return "", 0, ErrMalformed
		}
	}
	return host, port, nil
}
