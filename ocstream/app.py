"""Building the faust app that every ocstream command runs."""

from __future__ import annotations

from socket import gethostname
from typing import TYPE_CHECKING, Any

from .runtime import App, Table, TableManager, Worker
from .services import install as install_services
from .settings import Settings
from .transport.assignor import LoadAwareAssignor
from .web import register_views

if TYPE_CHECKING:
    from topology import DataflowSettings


def build_app(
    settings: Settings, *, redis_url: str, dataflow: DataflowSettings | None = None
) -> Any:
    """A faust app on the Redis transport with the dataflow of :mod:`topology` declared, with
    ``dataflow`` (default: read from the environment now)."""
    import topology

    data_dir = settings.data_dir.absolute()
    (data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=redis_url,
        store="rocksdb://",
        topic_partitions=settings.partitions,
        datadir=str(data_dir / "faust"),
        web_port=settings.port,
        web_bind=settings.address,
        web_host=settings.address if settings.address not in ("0.0.0.0", "::") else gethostname(),
        broker_commit_interval=settings.commit_interval,
        broker_commit_every=settings.commit_every,
        table_standby_replicas=settings.standby_replicas,
        consumer_group_instance_id=settings.instance_id,
        stream_recovery_delay=0.1,
        autodiscover=False,
        topic_allow_declare=True,
        # Quicker start and stop, and a quieter log at -l info (ocstream/runtime.py).
        Worker=Worker,
        TableManager=TableManager,
        Table=Table,
        PartitionAssignor=LoadAwareAssignor,
    )
    app.transport_settings = settings.transport  # type: ignore[attr-defined]
    register_views(app)
    install_services(app, settings, redis_url=redis_url)
    topology.declare(app, role=settings.role, settings=dataflow)
    return app
