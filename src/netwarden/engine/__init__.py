"""The one composition: backend sources -> flow table -> callouts -> decisions ->
typed events on a bus. Every face (CLI, TUI, daemon, proxy) starts or joins an
engine and subscribes to its events; none of them opens kernel sources itself."""
