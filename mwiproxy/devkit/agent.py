"""A database agent process (`mwiproxy start --roles=db`) next to a topology."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from mwiproxy.devkit.ports import free_port

if TYPE_CHECKING:
    from mwiproxy.devkit.topology import Topology

AGENT_SERVICE = "agent-server"
AGENT_HEAD = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {data_dir}
db_service:
  listen_addr: 127.0.0.1:{port}
  heartbeat_ttl: 3s
{service_extra}databases:
"""


def agent_yaml(*databases: tuple[str, str, str]) -> str:
    """An agent config template (for `Agent`) serving `databases`, each (name,
    protocol, uri) with the label env: dev; a uri may name {pg_port}."""
    return AGENT_HEAD + "".join(
        f"  - name: {name}\n    protocol: {protocol}\n    uri: {uri}\n"
        "    static_labels: {{env: dev}}\n" for name, protocol, uri in databases)


AGENT_YAML = agent_yaml((AGENT_SERVICE, "postgres", "127.0.0.1:{pg_port}"))


class Agent:
    def __init__(self, topo: Topology, name: str, service_extra: str = "",
                 template: str = AGENT_YAML) -> None:
        """`template`: the config (AGENT_YAML: the topology's PostgreSQL as
        `agent-server`; `agent_yaml` for others), formatted with data_dir, port,
        service_extra and pg_port (0 in a topology without PostgreSQL)."""
        self.topo = topo
        self.data_dir = topo.root / f"agent-{name}"
        self.config = topo.root / f"agent-{name}.yaml"
        self.port = free_port()
        self.config.write_text(template.format(data_dir=self.data_dir, port=self.port,
                                               pg_port=topo.pg.port if topo.pg else 0,
                                               service_extra=service_extra))
        self.log = topo.root / f"agent-{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, *, token: str | None = None, expect_ready: bool = True,
              auth_servers: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """`auth_servers`: the cluster addresses, each as one `--auth-server` (default:
        the topology's cluster)."""
        servers = auth_servers or (self.topo.cluster.addr,)
        cmd = [sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start", "--roles=db",
               "-c", str(self.config), *(f"--auth-server={a}" for a in servers),
               f"--ca-pin={self.topo.ca_pin}", *([f"--token={token}"] if token else [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "a"), text=True)
        if expect_ready:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if "database agent" not in line:
                raise AssertionError(f"agent failed: {line}{self.log.read_text()}")
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the agent and wait for it; it drains its link sessions first (up to
        its drain_timeout), so one still open at a rig's teardown gets it SIGKILLed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def db_token(topo: Topology) -> str:
    out = topo.cluster.ctl("tokens", "add", "--type=db", "--ttl=5m", "--format", "json").stdout
    return str(json.loads(out)["token"])
