// Package transport is Mirage's library: a client and a bridge server that
// carry multiplexed streams inside connections a censor cannot tell from
// visits to an ordinary HTTPS website. The wire format is specified in
// PROTOCOL.md beside this file.
//
// The layers of a session, from the wire up:
//
//	TCP
//	TLS 1.3: the client sends a real browser's ClientHello (utls) whose
//	         session_id carries an authentication tag (package auth)
//	openings: the server proves it holds the bridge key; padding both ways
//	batchConn: smux frames coalesced into full TLS records, framed, and
//	           padded where a stream or the session is young; later,
//	           short records are padded to a random size bucket
//	smux v2: streams with per-stream flow control and keepalives
//	per stream: a request (CONNECT host:port, UDP relay, default target)
//	            and the server's status, then the user's bytes
//
// Anyone whose ClientHello does not carry a valid, fresh, unreplayed tag
// meets the bridge's face: its own website (SiteFace) or another site it
// passes bytes to (CoverFace), and nothing else.
//
// A client:
//
//	l, err := link.Parse("mirage://KEY@bridge.example:443?sni=bridge.example")
//	client, err := transport.NewClient(transport.ClientConfig{Address: l.Address, Params: l.Params})
//	conn, err := client.OpenStream(ctx, transport.Request{
//		Command: transport.CmdConnect,
//		Addr:    transport.Addr{Host: "example.org", Port: 443},
//	})
//
// A bridge:
//
//	srv, err := transport.NewServer(transport.ServerConfig{
//		PrivateKey: state.PrivateKey,
//		ShortIDs:   state.ShortIDs,
//		Site:       &transport.SiteFace{TLSConfig: tlsConfig, Handler: site},
//		Handler: func(st *transport.Stream) {
//			// Apply policy to st.Request, then st.Reply(transport.StatusOK)
//			// and copy bytes, or st.Reply(transport.StatusNotAllowed).
//		},
//	})
//	err = srv.Serve(listener)
package transport
