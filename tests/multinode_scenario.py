"""A multi-node run on one machine, for tests/test_multinode.py (run as a subprocess: one process cannot
join two Ray clusters). A 0-CPU head, one `trainer` node and two `sampler` nodes; a tiny DPO-ST iteration;
one sampler node is removed while the coordinator samples. Prints one JSON line with what it saw."""

from __future__ import annotations

import json
import sys
import threading
import time


def running_replica_nodes(app: str, deployment: str) -> list[str]:
    """The node of every RUNNING replica, as Serve's controller reports it (what `serve status` and the
    dashboard read): calls through a handle only show the replicas its router happened to pick."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    details = ServeInstanceDetails(**_get_global_client().get_serve_details())
    replicas = details.applications[app].deployments[deployment].replicas
    return sorted(r.node_id for r in replicas if r.state == "RUNNING")


def main(config_path: str, port: int) -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    trainer = cluster.add_node(num_cpus=2, resources={"trainer": 2})
    samplers = [cluster.add_node(num_cpus=1, resources={"sampler": 1}) for _ in range(2)]
    ray.init(address=cluster.address, namespace="dpost")

    from cluster.config import load_config
    from cluster.job import drive

    config = load_config(config_path)
    removed: dict = {}

    def remove_a_sampler_node_while_sampling() -> None:
        manifest = config.run_dir / "manifest.json"
        while True:
            stages = json.loads(manifest.read_text())["stages"] if manifest.exists() else {}
            if stages.get("it1-dpo-samples", {}).get("status") == "running":
                break
            time.sleep(0.05)
        removed["placements_before"] = running_replica_nodes("rollout", "Sampler")
        cluster.remove_node(samplers[1])
        removed["node"] = samplers[1].node_id
        removed["at_stage"] = "it1-dpo-samples"

    watcher = threading.Thread(target=remove_a_sampler_node_while_sampling, daemon=True)
    watcher.start()
    result = drive(config, detached=False, show_progress=False)
    watcher.join(5)
    manifest = json.loads((config.run_dir / "manifest.json").read_text())
    import httpx

    answer = httpx.post(f"http://127.0.0.1:{port}/v1/solve", json={"question": "Ava has 3 pens. How many?"},
                        timeout=120)
    from services.registry import get_registry

    print("RESULT " + json.dumps({
        "registry_node": ray.get(get_registry().node_id.remote()), "head_node": cluster.head_node.node_id,
        "http_status": answer.status_code, "http_body": answer.json(),
        "result": result, "removed": removed, "trainer_node": trainer.node_id,
        "sampler_nodes": [n.node_id for n in samplers], "manifest": manifest,
    }, default=str), flush=True)
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
