"""`mwictl audit verify` against a real `mwiproxy start`: an untouched log verifies and
its head can be exported; a row deleted from state.db while the cluster was down is
logged and audited at the next start, and verify keeps naming it."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytestmark = pytest.mark.integration


def test_verify_export_tamper_restart(cluster):
    cluster.ctl("bots", "add", "one")
    cluster.ctl("bots", "add", "two")
    cluster.ctl("bots", "rm", "one")
    ok = cluster.ctl("audit", "verify")
    assert ok.returncode == 0
    (line,) = ok.stdout.splitlines()
    assert line.startswith("5 events, chain intact, head ") and line.endswith("@5")
    head = cluster.ctl("audit", "verify", "--head").stdout.strip()
    assert line.endswith(head) and len(head.split("@")[0]) == 64
    assert cluster.ctl("audit", "verify", "--expect-head", head).returncode == 0
    bad = cluster.ctl("audit", "verify", "--expect-head", "xyz", check=False)
    assert bad.returncode == 1 and "HASH@ID" in bad.stderr
    misplaced = cluster.ctl("audit", "--head", check=False)
    assert misplaced.returncode == 1 and "mwictl audit verify" in misplaced.stderr

    cluster.stop()
    db = sqlite3.connect(cluster.data_dir / "state.db")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE id = 3")  # the first bot's token, gone
    db.commit()
    db.close()
    cluster.start()

    log = cluster.log.read_text()
    assert "ERROR mwiproxy.audit: audit log chain broken at event 3: deleted" in log
    assert "append-only triggers were missing or altered (audit_no_delete)" in log
    broken = cluster.ctl("audit", "verify", check=False)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert "BROKEN at event 3: deleted: event 3 is missing (reported at start by event 6)" \
        in broken.stdout
    assert "chain BROKEN (first at event 3)" in broken.stdout
    events = [json.loads(ln) for ln in cluster.ctl(
        "audit", "--type", "audit.chain_broken", "--type", "audit.triggers_missing",
        "--format", "json").stdout.splitlines()]
    assert [(e["id"], e["type"]) for e in events] == [(6, "audit.chain_broken"),
                                                      (7, "audit.triggers_missing")]
    assert events[0]["broken_id"] == 3 and events[0]["reason"] == "deleted"
    # the old head is still in the log: the break is in its past
    anchored = cluster.ctl("audit", "verify", "--expect-head", head, "--format", "json",
                           check=False)
    assert anchored.returncode == 2
    assert [b["reason"] for b in json.loads(anchored.stdout)["breaks"]] == ["deleted"]

    # a second start reports nothing new
    cluster.stop()
    cluster.start()
    again = [json.loads(ln) for ln in cluster.ctl(
        "audit", "--type", "audit.chain_broken", "--format", "json").stdout.splitlines()]
    assert len(again) == 1
