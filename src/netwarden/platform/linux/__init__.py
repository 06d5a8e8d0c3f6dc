"""Linux backend: netlink (sock_diag, conntrack), procfs, nftables, eBPF flow events."""
