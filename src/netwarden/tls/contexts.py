"""The SSL contexts interception needs, made once and kept: one per ALPN offer for
upstream connections (verifying against the system's trust store and the policy's extra
CA), one per leaf and chosen ALPN for clients."""

from __future__ import annotations

import collections
import datetime
import ssl
import threading

from netwarden.tls.leaves import LeafStore, names_of

MAX_SESSIONS = 4096
MAX_CLIENT_CONTEXTS = 2048  # one per host (and ALPN) intercepted lately


class TlsContexts:
    def __init__(self, leaves: LeafStore, extra_ca: str = "") -> None:
        self.leaves = leaves
        self.extra_ca = extra_ca
        self._lock = threading.Lock()
        self._upstream: dict[tuple[str, ...], ssl.SSLContext] = {}
        # (names, ALPN) -> the context and the expiry of the leaf it presents; the
        # least recently used go first beyond MAX_CLIENT_CONTEXTS
        self._client: collections.OrderedDict[
            tuple[tuple[str, ...], str], tuple[ssl.SSLContext, datetime.datetime]
        ] = collections.OrderedDict()
        self._sessions: dict[str, ssl.SSLSession] = {}

    def upstream(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        with self._lock:
            context = self._upstream.get(alpn)
            if context is None:
                context = ssl.create_default_context()
                if self.extra_ca:
                    context.load_verify_locations(self.extra_ca)
                if alpn:
                    context.set_alpn_protocols(list(alpn))
                self._upstream[alpn] = context
            return context

    def session(self, server: str) -> ssl.SSLSession | None:
        """A session to resume with this server (name and ALPN offer), if one was kept."""
        return self._sessions.get(server)

    def keep_session(self, server: str, session: ssl.SSLSession) -> None:
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[server] = session

    def for_client(self, certificate: bytes | None, server_name: str, alpn: str) -> ssl.SSLContext:
        """A server context presenting a leaf with the names of the upstream certificate
        (and server_name); it answers ALPN with alpn only (what the upstream chose), or
        with none."""
        names = names_of(certificate, server_name)
        chain, expires = self.leaves.leaf(names)
        with self._lock:
            known = self._client.get((names, alpn))
            if known is not None and known[1] == expires:
                self._client.move_to_end((names, alpn))
                return known[0]
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # a leaf signed anew: reload
            context.load_cert_chain(chain)
            if alpn:
                context.set_alpn_protocols([alpn])
            self._client[(names, alpn)] = (context, expires)
            if len(self._client) > MAX_CLIENT_CONTEXTS:
                self._client.popitem(last=False)
            return context
