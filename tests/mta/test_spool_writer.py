"""mta.receiver.SpoolWriter on a real reactor and filesystem: batches of messages
written by few threads, every store answered with its own outcome."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.trial import unittest

from common import spool as spoolmod
from common.errors import MailError
from mta.receiver import SpoolWriter


def envelope(n: int) -> spoolmod.Envelope:
    return spoolmod.Envelope(sender=f"s{n}@example.org", recipients=[spoolmod.Recipient("alice@example.test")])


class SpoolWriterTests(unittest.TestCase):
    def writer(self, threads: int) -> SpoolWriter:
        tmp = tempfile.mkdtemp(prefix="spool-writer-")  # trial's mktemp would write into the checkout
        self.addCleanup(shutil.rmtree, tmp, True)
        spool = spoolmod.Spool(Path(tmp), create=True)
        commits: list[int] = []
        writer = SpoolWriter(spool, reactor, threads=threads, on_commit=commits.append)
        writer.commits = commits
        self.addCleanup(writer.stop)
        return writer

    async def test_concurrent_stores_are_batched_and_all_durable(self):
        for threads in (1, 4):
            writer = self.writer(threads)
            envelopes = [envelope(n) for n in range(60)]
            ids = await defer.gatherResults([writer.store(e, [b"Subject: %d\r\n\r\nbody\r\n" % i])
                                             for i, e in enumerate(envelopes)])
            self.assertEqual(ids, [e.queue_id for e in envelopes])
            spool = writer.spool
            self.assertEqual(sorted(spool.list("incoming")), sorted(ids))
            self.assertEqual(os.listdir(spool.dir("tmp")), [])
            for i, e in enumerate(envelopes):
                sf = spoolmod.parse(spool.path("incoming", e.queue_id))
                self.assertEqual((sf.envelope.sender, sf.read_message()), (e.sender, b"Subject: %d\r\n\r\nbody\r\n" % i))
            # Fewer directory fsyncs than messages: the batches shared them.
            self.assertLess(writer.commit.fsyncs, len(envelopes))
            for _ in range(200):  # the queue manager is told after the replies, via the reactor
                if sum(writer.commits) >= len(envelopes):
                    break
                await deferLater(0.01)
            self.assertEqual(sum(writer.commits), len(envelopes))

    async def test_one_failing_message_does_not_fail_its_batch(self):
        writer = self.writer(1)
        taken = envelope(0)
        writer.spool.write(taken, spoolmod.encode(taken, b"first\r\n")[1:2])
        again = envelope(1)
        again.queue_id = taken.queue_id  # already queued: must not be replaced
        good = envelope(2)
        results = await defer.DeferredList([writer.store(again, [b"second\r\n"]), writer.store(good, [b"ok\r\n"])],
                                           consumeErrors=True)
        (ok_again, failure), (ok_good, queue_id) = results
        self.assertFalse(ok_again)
        self.assertIsInstance(failure.value, MailError)
        self.assertEqual((failure.value.code, failure.value.enhanced), (451, "4.3.0"))
        self.assertTrue(ok_good)
        self.assertEqual(queue_id, good.queue_id)
        kept = spoolmod.parse(writer.spool.path("incoming", taken.queue_id))
        self.assertEqual(kept.read_message(), b"first\r\n")
        self.assertEqual(os.listdir(writer.spool.dir("tmp")), [])
        self.flushLoggedErrors(FileExistsError)


def deferLater(seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)
