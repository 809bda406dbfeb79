"""New messages get UIDs in the order they arrived, over imaplib: files found in new/
at one sync are ordered by the time in their maildir names, seconds and then the
microseconds of the M field compared as numbers (Dovecot's maildir_filename_sort_cmp),
so mail delivered within one second is numbered as it came."""

from __future__ import annotations

import os


def test_messages_of_one_second_get_uids_in_arrival_order(imapd):
    c = imapd.client()
    c.select("INBOX")  # the maildir and its uidlist exist; the files below are new to it
    new = imapd.maildir() / "new"
    # Names as postroom-deliver and Dovecot's LDA write them: sec.M<usec>P<pid>Q<n>.host,
    # the microseconds not zero-padded. Written in arrival order.
    arrivals = [1700000000.099998, 1700000000.099999, 1700000000.100001, 1700000000.5, 1700000001.000002]
    for i, when in enumerate(arrivals):
        sec, usec = divmod(round(when * 1_000_000), 1_000_000)
        body = b"Subject: arrival %d\n\nx\n" % i
        path = new / f"{sec}.M{usec}P{4000 + i}Q{i}.mx.example.test,S={len(body)}"
        path.write_bytes(body)
        os.utime(path, (sec, sec))
    assert c.noop()[0] == "OK"
    typ, data = c.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    subjects = [item[1].strip() for item in data if isinstance(item, tuple)]
    assert subjects == [b"Subject: arrival %d" % i for i in range(len(arrivals))]
    c.logout()
