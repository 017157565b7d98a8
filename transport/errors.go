package transport

import "errors"

// Errors a client can meet while connecting to a bridge. Each says what
// happened and what the user can do about it; test with errors.Is.
var (
	// ErrNotBridge means the TLS handshake succeeded but the server never
	// proved that it holds the bridge's key. A Mirage bridge shows anyone it
	// cannot authenticate its face, an ordinary website, so a wrong key=, a
	// short id the bridge does not know, a clock far from the bridge's, or
	// an address that is the real website all look exactly like this. It is
	// fatal for this bridge line: retrying will not help until it is fixed.
	ErrNotBridge = errors.New("transport: the server did not prove it is this bridge " +
		"(it answered like an ordinary website): check key= and id= in your link or bridge line, " +
		"that the address is the bridge's, and that this computer's clock is right")

	// ErrNotTLS13 means the server negotiated a TLS version older than 1.3,
	// which no Mirage bridge does: the address is not a Mirage bridge.
	ErrNotTLS13 = errors.New("transport: the server did not speak TLS 1.3, so it is not a Mirage bridge: check the address")

	// ErrCertificate means the client aborted the TLS handshake, as a
	// browser does, because the server's certificate is neither valid for
	// the link's server name, nor the one the link pins (pin=), nor bound
	// to the bridge's key: what an interceptor with a certificate of its
	// own presents, or a bridge whose certificate changed since the link
	// was made. The error wrapping it says which.
	ErrCertificate = errors.New("transport: the bridge's certificate is not valid")

	// ErrStreamAborted is returned by reads and writes of a stream the
	// other end aborted (Abort): on a bridge, its destination reset the
	// connection, failed, or took nothing for the stall timeout; on a
	// client, its app reset or dropped the connection. The connection
	// this end relays should end as a reset would end it.
	ErrStreamAborted = errors.New("transport: the other end aborted the stream (its app or destination reset the connection, failed or stopped reading)")

	// ErrClosed is returned by operations on a closed Client or Server.
	ErrClosed = errors.New("transport: closed")

	// ErrSessionEnded is returned by a Session's OpenStream and
	// OpenStreamFast once the session has ended: closed here or by the
	// bridge, or out of connections to the bridge (the error wrapping
	// it says which). A session does not come back; a Client dials a
	// new one by itself.
	ErrSessionEnded = errors.New("transport: the session has ended: dial a new one (a Client does so by itself)")
)
