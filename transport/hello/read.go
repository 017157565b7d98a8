package hello

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// ReadClientHello reads TLS handshake records from r until one whole
// ClientHello handshake message has been gathered (it may span several
// records, and records may arrive in many TCP segments). It returns every
// byte it read from r (record headers included) as consumed, even on error,
// so the caller can replay them to another server, and the handshake message
// (4-byte header + body, record framing removed) as msg.
//
// It reads exactly record by record (header, then exactly the payload
// length) and never reads past the last record that completes the message,
// so whatever the peer sent after its ClientHello is still unread in r. The
// one exception to whole headers is the very first byte, which is read and
// checked on its own: a peer that is not speaking TLS is recognised without
// waiting for four more bytes that it may never send.
//
// It fails for: a first byte that is not 0x16 or a first record version
// whose major byte is not 3 (both wrap ErrNotTLS); a later record of another
// type or version (an interleaved record); a record length of 0 or more than
// MaxRecordPayload; a handshake type other than client_hello (1); a message
// longer than MaxHelloLen; a record that carries bytes after the end of the
// ClientHello (the hello must end at a record boundary); and any read error,
// which is wrapped, so errors.Is finds io.EOF (nothing was sent at all),
// io.ErrUnexpectedEOF (the peer stopped part-way) or a deadline error.
func ReadClientHello(r io.Reader) (consumed, msg []byte, err error) {
	rd := recordReader{r: r}
	msg, err = rd.readHello()
	if err != nil {
		return rd.consumed, nil, err
	}
	return rd.consumed, msg, nil
}

// recordReader keeps every byte read from r in consumed, so that each error
// path returns exactly what was taken off the connection.
type recordReader struct {
	r        io.Reader
	consumed []byte
}

// read reads exactly n more bytes from r, appends them to consumed and
// returns them. A short read still appends the bytes that did arrive, since
// they are gone from the connection either way.
func (rd *recordReader) read(n int, what string) ([]byte, error) {
	start := len(rd.consumed)
	rd.consumed = slices.Grow(rd.consumed, n)[:start+n]
	got, err := io.ReadFull(rd.r, rd.consumed[start:])
	rd.consumed = rd.consumed[:start+got]
	if err != nil {
		// io.ReadFull reports io.EOF when it read nothing. That is only
		// news when the peer sent nothing at all; after the first byte the
		// message is cut short whatever the boundary.
		if errors.Is(err, io.EOF) && start > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("hello: reading %s: %w", what, err)
	}
	return rd.consumed[start:], nil
}

// readHello gathers handshake payload record by record until it holds one
// whole ClientHello message, and returns a copy of that message.
func (rd *recordReader) readHello() ([]byte, error) {
	var msg []byte
	// want is the length of the whole message once its header has been
	// seen; until then it is 0 and the loop needs more bytes regardless.
	want := 0
	for first := true; want == 0 || len(msg) < want; first = false {
		payload, err := rd.readRecord(first)
		if err != nil {
			return nil, err
		}
		msg = append(msg, payload...)

		if msg[0] != handshakeClientHello {
			return nil, fmt.Errorf("hello: handshake type %d, want client_hello (1)", msg[0])
		}
		if want == 0 && len(msg) >= handshakeHeaderLen {
			// The header may itself straddle records, which TLS allows,
			// so the length is only known once four bytes are in.
			bodyLen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			want = handshakeHeaderLen + bodyLen
			if want > MaxHelloLen {
				return nil, fmt.Errorf("hello: ClientHello length %d exceeds %d", want, MaxHelloLen)
			}
		}
		if want != 0 && len(msg) > want {
			// TLS would let the next handshake message start in this
			// record, but PROTOCOL.md requires the hello to end at a record
			// boundary: a browser sends nothing after its hello until the
			// server answers, so extra bytes mark a peer that is not one.
			return nil, fmt.Errorf("hello: %d bytes after the ClientHello in its last record", len(msg)-want)
		}
	}
	return msg, nil
}

// readRecord reads one record header and its payload, checking the header
// before reading a byte of payload so that a bad length is never trusted.
func (rd *recordReader) readRecord(first bool) ([]byte, error) {
	// The content type is read alone so that a non-TLS peer is refused on
	// its first byte (see ReadClientHello).
	typ, err := rd.read(1, "record header")
	if err != nil {
		return nil, err
	}
	if typ[0] != recordTypeHandshake {
		if first {
			return nil, fmt.Errorf("%w: first byte 0x%02x", ErrNotTLS, typ[0])
		}
		return nil, fmt.Errorf("hello: record of type %d inside the ClientHello, want handshake (22)", typ[0])
	}
	hdr, err := rd.read(RecordHeaderLen-1, "record header")
	if err != nil {
		return nil, err
	}
	if hdr[0] != recordVersionMajorTLS {
		if first {
			return nil, fmt.Errorf("%w: record version 0x%02x%02x", ErrNotTLS, hdr[0], hdr[1])
		}
		return nil, fmt.Errorf("hello: record version 0x%02x%02x inside the ClientHello, want 3.x", hdr[0], hdr[1])
	}
	n := int(binary.BigEndian.Uint16(hdr[2:]))
	switch {
	case n == 0:
		// RFC 8446, section 5.1: zero-length handshake fragments MUST NOT
		// be sent. Refusing them also guarantees every record makes
		// progress, which bounds how many records a hello can take.
		return nil, errors.New("hello: record length 0")
	case n > MaxRecordPayload:
		return nil, fmt.Errorf("hello: record length %d exceeds %d", n, MaxRecordPayload)
	}
	return rd.read(n, "record payload")
}
