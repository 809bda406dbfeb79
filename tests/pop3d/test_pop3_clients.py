"""Other real clients against postroom-pop3d: Twisted's POP3 client, fetchmail on the
configuration `postroom-dev --no-start` writes, and the settings that change
behaviour (plaintext refused off loopback rules, LOGIN-DELAY, idle timeout, UIDL
format, mark_seen)."""

from __future__ import annotations

import json
import os
import poplib
import random
import subprocess
import sys
import textwrap
import time

import pytest

from common.config import load
from common.config.core import SandboxContext
from common.storage import INBOX, MailStore
from common.users import UserDB
from tests.support import ROOT, Daemon, require_tool

from .pop3_fixtures import PASSWORD, LineClient, login, pop3d_config, start, store_for, store_with, tls_context

TWISTED_CLIENT = textwrap.dedent("""
    import json, sys
    from twisted.internet import reactor, protocol, defer
    from twisted.mail.pop3client import POP3Client

    port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = {}

    @defer.inlineCallbacks
    def session(client):
        try:
            client.allowInsecureLogin = True  # loopback: the server allows it
            result["capabilities"] = sorted(k.decode() for k in (yield client.capabilities()))
            yield client.login(user.encode(), password.encode())
            result["sizes"] = list((yield client.listSize()))
            result["uids"] = [u.decode() for u in (yield client.listUID())]
            lines = yield client.retrieve(0)
            result["first"] = [l.decode() for l in lines]
            result["top"] = [l.decode() for l in (yield client.retrieve(1, lines=1))]
            yield client.delete(1)
            result["stat"] = list((yield client.stat()))
            yield client.quit()
        except Exception as e:
            result["error"] = repr(e)
        reactor.stop()

    class Factory(protocol.ClientFactory):
        def buildProtocol(self, addr):
            client = POP3Client()
            client.serverGreeting = lambda greeting: session(client)
            return client

    reactor.connectTCP("127.0.0.1", port, Factory())
    reactor.callLater(20, reactor.stop)
    reactor.run()
    print(json.dumps(result))
""")


def test_twisted_pop3_client(tmp_path):
    etc, pop3, pop3s = pop3d_config(tmp_path)
    user = "demo@example.test"
    store = store_for(tmp_path, user)
    store.deliver(b"Subject: first\n\n.dotted\nbody\n")
    store.deliver(b"Subject: second\nX: y\n\nline 1\nline 2\n")
    daemon = start(etc, pop3, pop3s)
    try:
        out = subprocess.run([sys.executable, "-c", TWISTED_CLIENT, str(pop3), user, PASSWORD],
                             capture_output=True, text=True, timeout=60)
    finally:
        daemon.stop()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    assert {"TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES"} <= set(result["capabilities"])
    assert result["sizes"] == [len(b"Subject: first\r\n\r\n.dotted\r\nbody\r\n"),
                               len(b"Subject: second\r\nX: y\r\n\r\nline 1\r\nline 2\r\n")]
    box = store.open_mailbox(INBOX)
    assert result["uids"] == [f"{uid:08x}{box.uidvalidity:08x}" for uid in (1, 2)]
    assert result["first"] == ["Subject: first", "", ".dotted", "body"]
    assert result["top"] == ["Subject: second", "X: y", "", "line 1"]
    assert result["stat"] == [1, result["sizes"][0]]
    assert [m.uid for m in box.messages] == [1]  # the second was deleted at QUIT


def _sandbox_offset() -> int:
    ctx = SandboxContext(dir=None)  # type: ignore[arg-type]
    for _ in range(50):
        offset = random.randrange(10000, 40000)
        ports = [ctx.BASE_PORTS["pop3"] + offset, ctx.BASE_PORTS["pop3s"] + offset]
        try:
            import socket
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return offset
        except OSError:
            continue
    raise RuntimeError("no free sandbox ports")


@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_fetchmail_retrieves_all_mail_from_the_sandbox(tmp_path, mode):
    """fetchmail against the configuration `postroom-dev --no-start` writes, with the
    sandbox's demo user and password, as the README tells a newcomer to try it."""
    fetchmail = require_tool("fetchmail")
    sandbox = tmp_path / "sandbox"
    offset = _sandbox_offset()
    made = subprocess.run([sys.executable, "-m", "common.tools.dev", "--dir", str(sandbox), "--no-start",
                           "--port-offset", str(offset)], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert made.returncode == 0, made.stdout + made.stderr
    etc = sandbox / "etc" / "postroom"
    ctx = SandboxContext(sandbox, offset)
    user = "demo@example.test"
    cfg = load(etc, "pop3d")
    store = MailStore(UserDB(etc / "users").lookup(user).maildir(cfg.core))
    sent = [f"Subject: message {i}\nMessage-ID: <{i}@example.test>\n\n.line with a dot\nbody {i}\n".encode()
            for i in range(25)]
    for body in sent:
        store.deliver(body)
    out_dir = tmp_path / "fetched"
    out_dir.mkdir()
    port = ctx.port("pop3") if mode == "stls" else ctx.port("pop3s")
    tls = "sslproto TLS1.2+ no sslcertck" if mode == "stls" else "ssl sslproto TLS1.2+ no sslcertck"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(textwrap.dedent(f"""\
        set no syslog
        poll 127.0.0.1 with proto POP3 port {port} uidl
          user "{user}" there with password "postroom" is "{os.environ.get('USER', 'root')}" here
          options fetchall nokeep {tls}
          mda "/bin/sh -c 'cat > {out_dir}/msg.$$'"
        """))
    rc.chmod(0o600)
    daemon = Daemon("pop3d.main", etc).start((ctx.port("pop3"), ctx.port("pop3s")))
    try:
        env = {**os.environ, "HOME": str(tmp_path), "FETCHMAILHOME": str(tmp_path)}
        run = subprocess.run([fetchmail, "-f", str(rc), "--nodetach", "-v"], capture_output=True, text=True,
                             timeout=120, env=env)
    finally:
        daemon.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    got = sorted(p.read_bytes() for p in out_dir.iterdir())
    assert len(got) == len(sent)
    # fetchmail adds its own Received header; the rest is the message as stored (CRLF undone).
    for body in sent:
        assert any(g.replace(b"\r\n", b"\n").endswith(body) for g in got), body
    assert store.open_mailbox(INBOX).messages == []  # nokeep: deleted at QUIT


def test_plaintext_refused_without_tls_when_loopback_is_not_trusted(tmp_path):
    etc, pop3, pop3s = pop3d_config(tmp_path, core_auth="  loopback_is_secure: false\n",
                                    extra="login_delay: 3s\nidle_timeout: 1s\n")
    user = "alice@example.test"
    store_for(tmp_path, user).deliver(b"Subject: x\n\ny\n")
    daemon = start(etc, pop3, pop3s)
    try:
        client = poplib.POP3("127.0.0.1", pop3, timeout=10)
        capa = client.capa()
        assert "USER" not in capa and "SASL" not in capa and "STLS" in capa and capa["LOGIN-DELAY"] == ["3"]
        with pytest.raises(poplib.error_proto) as exc:
            client.user(user)
        assert exc.value.args[0].startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
        client.stls(tls_context())
        client.user(user)
        assert client.pass_(PASSWORD).startswith(b"+OK")
        client.quit()
        # LOGIN-DELAY: a second login within 3 s is refused with the code.
        again = poplib.POP3_SSL("127.0.0.1", pop3s, context=tls_context(), timeout=10)
        again.user(user)
        with pytest.raises(poplib.error_proto) as exc:
            again.pass_(PASSWORD)
        assert exc.value.args[0].startswith(b"-ERR [LOGIN-DELAY]")
        again.close()
        # Idle timeout: the server says goodbye and closes.
        idle = LineClient(pop3)
        started = time.monotonic()
        assert idle.line().startswith(b"-ERR Autologout")
        assert time.monotonic() - started < 10  # idle_timeout is 1 s; the default would be 10 minutes
        assert idle.closed_by_server()
    finally:
        daemon.stop()


def test_proxy_protocol_address_decides_the_plaintext_rule(tmp_path):
    """Behind a proxy, the client's address from the PROXY header counts: a client on
    192.0.2.9 is not on loopback, so USER is refused until STLS."""
    etc, pop3, pop3s = pop3d_config(tmp_path)
    (etc / "pop3d.yaml").write_text(f"""listeners:
  pop3:
    endpoint: tcp:{pop3}:interface=127.0.0.1
    tls: starttls
    proxy_protocol: true
    proxy_from: [127.0.0.1]
""")
    daemon = start(etc, pop3)
    try:
        client = LineClient(pop3, prelude=b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 110\r\n")
        assert client.greeting.startswith(b"+OK")
        assert client.cmd("USER alice@example.test").startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
        client.starttls()
        assert client.cmd("USER alice@example.test").startswith(b"+OK")
        assert client.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
        client.cmd("QUIT")
        client.close()
    finally:
        daemon.stop()
    assert "192.0.2.9" in daemon.output()


def test_uidl_format_and_max_messages(tmp_path):
    etc, pop3, pop3s = pop3d_config(tmp_path, extra='uidl_format: "%v.%u"\nmax_messages: 2\n')
    user = "carol@example.test"
    store = store_with(tmp_path, user, 3)
    daemon = start(etc, pop3, pop3s)
    try:
        client = login(pop3, user, tls="none")
        box = store.open_mailbox(INBOX, readonly=True)
        assert client.uidl()[1] == [f"{n} {box.uidvalidity}.{n}".encode() for n in (1, 2)]
        assert client.stat()[0] == 2  # the oldest two; the third waits for the next session
        client.dele(1)
        client.dele(2)
        client.quit()
        client = login(pop3, user, tls="none")
        assert client.stat()[0] == 1 and client.retr(1)[1][0] == b"Subject: 2"
        assert client.uidl()[1] == [f"1 {box.uidvalidity}.3".encode()]
        client.quit()
    finally:
        daemon.stop()


def test_mark_seen_false_leaves_retrieved_mail_unseen(tmp_path):
    etc, pop3, pop3s = pop3d_config(tmp_path, extra="mark_seen: false\n")
    user = "dave@example.test"
    store = store_with(tmp_path, user, 3)
    daemon = start(etc, pop3, pop3s)
    try:
        client = login(pop3, user, tls="none")
        for n in (1, 2, 3):
            assert client.retr(n)[0].startswith(b"+OK")
        client.dele(3)
        assert client.quit().startswith(b"+OK Logging out (2 messages left)")
    finally:
        assert daemon.stop() == 0, daemon.output()
    box = store.open_mailbox(INBOX, readonly=True)
    assert [(m.uid, sorted(m.flags)) for m in box.messages] == [(1, []), (2, [])]
