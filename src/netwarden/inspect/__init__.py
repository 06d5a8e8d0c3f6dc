"""Sans-io inspection: bytes in, results out (protocol identification, the TLS
ClientHello, HTTP rules). No sockets here; proxy/ drives these."""
