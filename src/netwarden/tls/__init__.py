"""TLS interception: netwarden's certificate authority, the leaf certificates it signs
per server name, and the memory of hosts whose clients refused them (passthrough)."""
