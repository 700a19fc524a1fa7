"""Server assembly: routes, and one cleanup context per resource (store, HTTP client, delivery),
opened in order and closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from functools import partial
from typing import Any

import aiohttp
import msgspec
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from bridge import USER_AGENT, __version__
from bridge.admin import add_routes as add_admin_routes
from bridge.appkeys import RUNTIME
from bridge.bodies import ACCEPT_ENCODING
from bridge.config import Config, DestinationConfig
from bridge.delivery.dispatcher import Attempted, Destination, Dispatcher
from bridge.delivery.orphans import log_orphaned
from bridge.delivery.redaction import MIN_SECRET_CHARS
from bridge.delivery.sender import VendorResponse, WrittenRequest
from bridge.errors import ErrorList, MappingError, StoreUnavailable
from bridge.fdlimit import delivery_pool
from bridge.forwarded import TrustedProxies, behind_proxies
from bridge.intake import hook_get, hook_options, hook_post
from bridge.kept_names import config_names, mapping_names, unheld_names
from bridge.mapping.mappingset import MappingSet, Target, load_mapping_folder, load_mapping_texts
from bridge.metrics import metrics
from bridge.offload import render_sliced
from bridge.reload import MappingReloader, reload_context, serve_last_good, serve_last_good_if_empty
from bridge.resolver import BoundedResolver
from bridge.retention import longest_reopen_after, run_retention
from bridge.routing import render_create_again, render_follow_up
from bridge.runtime import Runtime, Source
from bridge.sandbox_access import guard as sandbox_guard
from bridge.sandbox_identity import sandbox_problem
from bridge.server_name import name_the_server
from bridge.simulators import registry as simulator_registry
from bridge.store import open_store
from bridge.store.base import Claimed, Store
from bridge.tracing import build_tracing
from bridge.vendors.base import Adapter, Outcome
from bridge.vendors.credentials import Admit
from bridge.vendors.files import multipart_preview
from bridge.vendors.registry import adapter_class
from handlers.registry import build_handler

log = structlog.get_logger("ticketbridge.app")


def _vendor_body(name: str, cfg: DestinationConfig, cls: type[Adapter]) -> Callable[..., Any]:
    """The body the vendor is sent for a mapping's fields, as JSON data (for mapping tests and `render`)."""
    adapter = cls(name, cfg, cfg.base_url or "http://sandbox.invalid")

    def body(action: str, fields: dict[str, Any], options: Mapping[str, Any],
             ticket: Mapping[str, Any] | None = None) -> Any:
        request = adapter.build_request(action, fields, options, ticket=ticket)
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            return multipart_preview(request.body, content_type)
        try:
            return msgspec.json.decode(request.body)
        except msgspec.DecodeError:
            raise MappingError(f"the {cfg.vendor} body is not JSON: {request.body[:200]!r}") from None

    return body


def destination_targets(config: Config) -> dict[str, Target]:
    """What the mapping loader checks each destination's mappings against: the vendor's actions and
    static rules, and how it wraps fields into the body it is sent."""
    out = {}
    for name, d in config.destinations.items():
        cls = adapter_class(d.vendor)
        out[name] = Target(cls.actions, cls.static_check, _vendor_body(name, d, cls))
    return out


def load_mappings(config: Config) -> MappingSet:
    """The config's mapping folder, loaded and checked; raises ErrorList."""
    if not config.mappings_dir.is_dir():
        raise ErrorList([config.mappings_missing(MappingError)])
    return load_mapping_folder(config.mappings_dir, sources=set(config.sources),
                               destinations=destination_targets(config), vars_=config.vars,
                               named=config.mapping_file_name)


def load_stored_mappings(config: Config, files: dict[str, str]) -> MappingSet:
    """A stored set of files, compiled as the config's folder would compile them; raises ErrorList."""
    return load_mapping_texts(config.mappings_dir, files, sources=set(config.sources),
                              destinations=destination_targets(config), vars_=config.vars,
                              named=config.mapping_file_name)


def build_runtime(config: Config, mappings: MappingSet | None = None) -> Runtime:
    sources = {name: Source.build(name, build_handler(name, opts, config.server))
               for name, opts in config.sources.items()}
    rt = Runtime(config=config, sources=sources, mappings=mappings or load_mappings(config))
    for name, source in sources.items():
        source.handler.count = partial(rt.count, source=name)
    return rt


def build_destinations(rt: Runtime) -> dict[str, Destination]:
    out = {}
    for name, cfg in rt.config.destinations.items():
        vendor = cfg.vendor
        # A sandbox with a base_url is a shared simulator there (`ticketbridge sandbox`); without, this process's.
        base_url: str | Callable[[], str] = cfg.base_url if cfg.base_url else (lambda v=vendor: rt.sandbox_url(v))
        out[name] = Destination.from_config(name, cfg, base_url, attachments_dir=rt.config.attachments_dir)
        short = out[name].adapter.redactor.short
        if short:
            log.warning("destination.secret_too_short", destination=name, keys=short,
                        note=f"a secret shorter than {MIN_SECRET_CHARS} characters is not redacted by its value "
                             "from what the vendor answers, only where a name says it is a credential")
    return out


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Ready while the store commits: a lost store file or failing commits (a full disk) answer 503 with why."""
    rt = request.app[RUNTIME]
    if rt.store is None:
        return web.json_response({"status": "starting"}, status=503)
    problem = await rt.store.check()
    if problem is not None:
        return web.json_response({"status": "unavailable", "store": problem.kind, "reason": problem.reason},
                                 status=503, headers={"Retry-After": "5"})
    return web.json_response({"status": "ready", "mappings": rt.mappings.version})


CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


@contextlib.asynccontextmanager
async def background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """`work` as a named task for as long as the block runs; cancelled, and waited for, when it ends."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def store_context(rt: Runtime, store: Store | None, folder_errors: ErrorList | None = None, *,
                  empty_folder: bool = False) -> CleanupCtx:
    """Open the store first and close it last. After a start with a broken mappings folder, or one that loads to
    no mapping (`empty_folder`, unless `mappings_allow_empty`), the last good set kept in the store is put in
    force before anything else runs (or the start fails). A name the store cannot keep (kept_names) fails the
    start."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        opened = store or open_store(rt.config)
        await opened.open()
        try:
            if folder_errors is not None:
                await serve_last_good(rt, opened, folder_errors, lambda files: load_stored_mappings(rt.config, files))
            elif empty_folder:
                await serve_last_good_if_empty(rt, opened, lambda files: load_stored_mappings(rt.config, files))
            unheld = await unheld_names(opened, [*config_names(rt.config), *mapping_names(rt.mappings)])
            if unheld:
                raise ErrorList(unheld)
        except BaseException:
            await opened.close()
            raise
        rt.store = opened
        log.info("store.opened", url=rt.config.store_url.scheme, path=rt.config.shown_store_file)
        await log_orphaned(rt.config.destinations, opened)
        try:
            async with background(stop_when_lost(rt, opened), "store watcher"):
                yield
        finally:
            rt.store = None
            await opened.close()
            log.info("store.closed", commits=getattr(opened, "batches", None),
                     writes=getattr(opened, "batched_ops", None))

    return ctx


async def stop_when_lost(rt: Runtime, store: Store) -> None:
    """Once the store is lost for good (and what it held saved), stop the server, which then exits
    non-zero: its supervisor starts it again on the restored file. Until then intake answers 503."""
    reason = await store.wait_lost()
    rt.fatal = f"the store was lost: {reason}"
    log.error("server.exiting", reason=rt.fatal, note="restart ticketbridge; a supervisor does it by itself")
    if rt.on_fatal is not None:
        rt.on_fatal()


def handlers_context(rt: Runtime) -> CleanupCtx:
    """Each source's handler makes what it keeps open (SES's S3 client) before the app serves, and lets go of
    it at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        for source in rt.sources.values():
            try:
                await source.handler.open()
            except Exception as exc:  # made again at first use; a start must not fail on a provider's client
                log.warning("app.handler_open_failed", source=source.name, error=f"{type(exc).__name__}: {exc}")
        yield
        for source in rt.sources.values():
            try:
                await source.handler.close()
            except Exception as exc:  # one handler failing to close must not keep the others open
                log.warning("app.handler_close_failed", source=source.name, error=f"{type(exc).__name__}: {exc}")

    return ctx


def sandbox_context(rt: Runtime) -> CleanupCtx:
    """Each sandbox also listens on its own loopback port, opened before the delivery loop and closed
    after it, so that sends in flight at shutdown still reach it once the main site has stopped."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runners = []
        try:
            for vendor, sim in rt.simulators.items():
                runner = web.AppRunner(sim.app(), access_log=None)
                await runner.setup()
                runners.append(runner)
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                host, port = runner.addresses[0][:2]
                rt.sandbox_urls[vendor] = f"http://{host}:{port}"
            yield
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
            rt.sandbox_urls.clear()

    return ctx


SANDBOX_PER_PROCESS = (
    "this process's own simulator serves the destination, and its tickets are this process's alone; every process "
    "on a PostgreSQL store sends what it claims to its own simulator, so a follow-up or an update another process "
    "sends goes to that process's ticket of the same id (another customer's, or none: 'ticket_id is missing'). "
    "With several processes, run one `ticketbridge sandbox` and give the destination its `base_url` "
    "(e.g. http://sandbox:9090/kapture), or run one process")


def per_process_sandboxes(config: Config, mappings: MappingSet) -> dict[str, list[str]]:
    """The destinations this process's own simulator serves (`sandbox: true` without a `base_url`) while the store
    is PostgreSQL, which other processes may share, each with the mappings that thread conversations into it (whose
    follow-ups need the ticket their conversation's first message made). Empty on SQLite: one process."""
    if config.store_url.scheme != "postgresql":
        return {}
    return {name: sorted(m.name for m in mappings.mappings.values() if m.destination == name and m.threaded)
            for name, d in sorted(config.destinations.items()) if d.own_sandbox}


def delivery_session(config: Config) -> aiohttp.ClientSession:
    """The HTTP client the delivery loop sends with. Each lane holds at most its max_in_flight connections, so the
    pool adds no cap of its own per host (a vendor holding one destination's requests would stall every other
    destination on its host), and holds every destination's max_in_flight in total (fdlimit.delivery_pool, which
    serve's open-file check counts). A connection that brought an interim status (1xx) as the answer is closed, never
    pooled (`VendorResponse`). Host names are resolved in threads of their own (`BoundedResolver`), never in the
    event loop's default executor; whether a request's head was written is marked (`WrittenRequest`: a timeout
    before it is a plain retry). Vendors are offered the content codings a send's answer is read in
    (ACCEPT_ENCODING: the sender decodes it itself), not aiohttp's offer, which grows with what is installed."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=delivery_pool(config.destinations), limit_per_host=0, ttl_dns_cache=300,
                                       resolver=BoundedResolver()),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING}, request_class=WrittenRequest,
        response_class=VendorResponse,
    )


def build_dispatcher(rt: Runtime, store: Store, session: aiohttp.ClientSession) -> Dispatcher:
    """The delivery loop as the server runs it, on `store`, sending with `session` (not started)."""

    async def follow_ups(item: Claimed) -> Claimed | Outcome:
        event = await store.get_event(item.event_id)
        return await render_sliced(render_follow_up, rt.mappings, rt.config.vars, event, item, what="follow_up",
                                   delivery_id=item.id)

    async def creates(item: Claimed) -> Claimed | Outcome:
        event = await store.get_event(item.event_id)
        return await render_sliced(render_create_again, rt.mappings, rt.config.vars, event, item,
                                   what="create_again", delivery_id=item.id)

    async def sandbox_check(dest: Destination) -> str | None:
        return await sandbox_problem(session, dest.config.base_url or "", dest.config.vendor)

    return Dispatcher(store, session, build_destinations(rt), on_attempt=attempt_observer(rt),
                      coordination=store.coordination(), lease_s=rt.config.store.lease_seconds,
                      follow_ups=follow_ups, creates=creates, instance=instance_name(rt.config.server.port),
                      on_ticket_dropped=lambda name: rt.count("delivery.ticket_id_dropped", destination=name),
                      on_ticket_missing=lambda name: rt.count("delivery.ticket_id_missing", destination=name),
                      on_follow_up_in_doubt=lambda name, handling: rt.count("delivery.follow_up_in_doubt",
                                                                            destination=name, handling=handling),
                      sandbox_check=sandbox_check)


def delivery_context(rt: Runtime) -> CleanupCtx:
    """The HTTP client and the dispatcher; on shutdown, sends in flight get the grace period."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        assert rt.store is not None
        session = delivery_session(rt.config)
        store = rt.store
        dispatcher = build_dispatcher(rt, store, session)
        dispatcher.start()
        rt.dispatcher = dispatcher

        def announced(destination: str) -> None:
            dispatcher.notify(set(dispatcher.lanes) if destination == "*" else {destination})

        await store.subscribe(announced)
        try:
            async with background(reap_expired_leases(store, dispatcher, dispatcher.lease_s / 3,
                                                      lambda n: rt.count("leases.taken_over", n)), "lease reaper"):
                yield
        finally:
            await dispatcher.stop(rt.config.server.shutdown_grace_seconds)
            rt.dispatcher = None
            await close_adapters(dispatcher.destinations, session,
                                 admits={name: lane.gate.admit_request for name, lane in dispatcher.lanes.items()})
            await session.close()

    return ctx


async def close_adapters(destinations: Mapping[str, Destination], session: aiohttp.ClientSession,
                         timeout_s: float = 5.0, admits: Mapping[str, Admit] | None = None) -> None:
    """Give back each destination's credentials (a log-out), all at once and within `timeout_s`; a failure
    is logged, never raised, so that shutdown goes on. A destination's request waits for its slot at the
    destination's gate (`admits`: its rate limit, a 429's pause), as every other request to the vendor does; one
    that gets none within `timeout_s` is not sent (`vendor.close_timed_out`: the token is left to expire)."""

    async def close(name: str, dest: Destination) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await dest.adapter.close(session, None if admits is None else admits.get(name))
        except TimeoutError:
            log.warning("vendor.close_timed_out", destination=name, timeout_s=timeout_s,
                        note="no rate-limit slot, or no answer, within the time shutdown gives it: the log-out is "
                             "not made, and the token is left to expire")
        except Exception as exc:
            log.warning("vendor.close_failed", destination=name, error=f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(close(name, dest) for name, dest in destinations.items()))


REAP_SECONDS = 10.0
REAP_DEFERRED_LEASES = 3
"""After a pass the store failed, the longest a reaper defers reaping (in leases), the store failing again
meanwhile (`reap_expired_leases`)."""


def instance_name(port: int) -> str | None:
    """This server as a lease owner knows it across restarts: its host and port (no two running processes
    listen on both); None when the port is chosen at random (0)."""
    return f"{socket.gethostname()}:{port}" if port else None


def attempt_observer(rt: Runtime) -> Callable[[Attempted], None]:
    """What the dispatcher calls after each attempt: the counters and histograms of /metrics."""
    latencies = rt.latencies

    def observe(attempt: Attempted) -> None:
        rt.count("delivery.attempt", destination=attempt.destination, classification=attempt.classification)
        if attempt.duration_s is not None:
            latencies.attempt.observe(attempt.destination, attempt.duration_s)
        if attempt.latency_s is not None:
            latencies.delivery.observe(attempt.destination, attempt.latency_s)
        if rt.tracing is not None:
            rt.tracing.attempt(attempt)

    return observe


class ReapDeferral:
    """Whether a reaper may reap (`reap_expired_leases`): at once, unless a pass failed; then once the store has
    answered for a lease since (`lease_s`), or after REAP_DEFERRED_LEASES leases from the first pass it answered when
    it keeps failing now and then."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self.deferring = False
        """A pass failed, and reaping has not resumed since."""
        self._back_since: float | None = None  # when the store answered again, since its last failure
        self._deferred_since: float | None = None  # the first pass it answered, failures meanwhile or not

    def failed(self) -> None:
        """A pass failed: reaping waits for the store to answer for a lease from its next answer."""
        self.deferring, self._back_since = True, None

    def may_reap(self, now: float) -> bool:
        """Whether the pass the store answered at `now` may reap; saying so when a deferral begins and ends."""
        if not self.deferring:
            return True
        if self._back_since is None:
            self._back_since = now
        if self._deferred_since is None:
            self._deferred_since = now
            log.info("delivery.reap_deferred", wait_s=self.lease_s,
                     note="the store answers again after failing: leases that ran out meanwhile are reaped once it "
                          "has answered for a lease, so that live senders renew theirs first")
        back_s, deferred_s = now - self._back_since, now - self._deferred_since
        if back_s < self.lease_s and deferred_s < REAP_DEFERRED_LEASES * self.lease_s:
            return False
        if back_s < self.lease_s:
            log.warning("delivery.reap_resumed", deferred_s=round(deferred_s, 1), capped=True,
                        note=f"the store kept failing now and then: after {REAP_DEFERRED_LEASES} leases, leases that "
                             "ran out are reaped though it has not answered for a lease since (a live process that "
                             "could not renew its leases meanwhile may lose them)")
        else:
            log.info("delivery.reap_resumed", deferred_s=round(deferred_s, 1), capped=False,
                     note="the store has answered for a lease: leases that ran out are reaped again")
        self.deferring, self._back_since, self._deferred_since = False, None, None
        return True


async def reap_expired_leases(store: Store, dispatcher: Dispatcher, every_s: float = REAP_SECONDS,
                              on_released: Callable[[int], None] | None = None) -> None:
    """Renew this process's leases and give back deliveries whose lease ran out: a process that died while sending them
    (shared stores), or this one's before a restart. Runs at once, then every `every_s` (a third of a lease), so a
    lease held here never runs out while its sender still waits, sends or holds a result, and a dead process's work
    is due again within a lease and a third. Each pass first gives back what this process owes
    (`Dispatcher.give_back_owed`: not sent, its release failed while the store was down; failing, it fails the pass
    once the leases are renewed), then extends the leases of what it still holds, in the same order on the one
    store, so that a result waiting to be recorded is never given back to be sent again, nor one never sent reaped
    in doubt. After a pass the store failed, leases are not reaped until the store has answered for a lease
    (`Dispatcher.lease_s`; each pass meanwhile asks it, `Store.ping`, as one that renews and gives back nothing
    asks it nothing: a process holding nothing would count the passes of an outage as the store answering): an
    outage longer than a lease lets every process's leases run out, and the live ones renew theirs and give back
    what they owe within that time (every third of a lease), while a dead process's work waits a lease longer. A
    store that keeps failing a pass now and then defers reaping for REAP_DEFERRED_LEASES leases at most, so a dead
    process's work is still taken over. `on_released` is told how many deliveries each pass took over from a sender
    that died or stalled (ticketbridge_lease_takeovers_total): the first pass also those an earlier process left in
    flight, which the store gave back when it opened (SQLite, `Store.recovered_at_open`) or `take_back` gives back
    (PostgreSQL, this host:port's earlier process); every pass those whose lease ran out."""
    first, taken_back = True, False
    deferral = ReapDeferral(dispatcher.lease_s)
    while True:
        if not first:
            await asyncio.sleep(every_s)
        first = False
        try:
            if not taken_back:
                taken = await dispatcher.take_back()
                taken_back = True
                if taken:
                    log.warning("delivery.taken_back", count=taken,
                                note="left in flight by this instance's previous process; due again now")
                if (recovered := taken + store.recovered_at_open()) and on_released is not None:
                    on_released(recovered)
            try:
                await dispatcher.give_back_owed()
            except StoreUnavailable:
                # Its leases renewed all the same (results held in memory among them), then the pass fails: a
                # release that alone fails (a row's lock it waits on past the statement timeout) must not let
                # every lease of this process run out.
                await dispatcher.keep_leases()
                raise
            await dispatcher.keep_leases()
            if deferral.deferring:
                # Neither asks the store anything when nothing is held or owed here: the store is asked now, so
                # that the wait for a lease runs from when it answers, not from a pass that asked it nothing
                # while it was still down (it would then reap at once as it comes back, before the live
                # processes renew their leases).
                await store.ping()
            if not deferral.may_reap(dispatcher.monotonic()):
                continue
            released = await store.release_expired()
        except StoreUnavailable as exc:
            deferral.failed()
            log.warning("delivery.reap_failed", error=str(exc))
            continue
        if released:
            if on_released is not None:
                on_released(released)
            log.warning("delivery.leases_expired", count=released,
                        note="their sender stopped answering; they are due again")


def tracing_context(rt: Runtime) -> CleanupCtx:
    """OpenTelemetry tracing while `tracing.enabled` (the `otel` extra); what is batched is sent at shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tracing = build_tracing(rt.config.tracing)
        if tracing is None:
            yield
            return
        rt.tracing = tracing
        try:
            yield
        finally:
            rt.tracing = None
            await asyncio.to_thread(tracing.shutdown)  # the exporter may wait on the network

    return ctx


def retention_context(rt: Runtime) -> CleanupCtx:
    """The retention sweep (see bridge.retention), for as long as the store is open."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        assert rt.store is not None
        async with background(run_retention(rt.store, rt.config.retention, rt.config.attachments_dir,
                                            lambda name, n, kind: rt.count(name, n, kind=kind),
                                            lambda: longest_reopen_after(rt.mappings.mappings.values())),
                              "retention"):
            yield

    return ctx


def build_app(config: Config, *, store: Store | None = None, workers: bool = True,
              mappings: MappingSet | None = None) -> web.Application:
    """The whole server. When the mappings folder does not load: with `mappings_on_start_error: fail`,
    raises ErrorList at once; with `last_good`, the app starts with the last good set kept in the store
    (its start-up raises ErrorList when there is none)."""
    folder_errors: ErrorList | None = None
    from_folder = mappings is None
    if mappings is None:
        try:
            mappings = load_mappings(config)
        except ErrorList as exc:
            if config.mappings_on_start_error == "fail":
                raise
            folder_errors, mappings = exc, MappingSet.build([])
    rt = build_runtime(config, mappings)
    name_the_server()
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[RUNTIME] = rt
    post: Handler = hook_post
    get: Handler = hook_get
    proxies = TrustedProxies(config.server.trusted_proxies)
    if everyone := proxies.everyone():
        log.warning("server.trusted_proxies_everyone", networks=everyone,
                    note="every client is trusted as a proxy: any sender can set the address intake logs, stores and "
                         "budgets SES certificate fetches by (X-Forwarded-For); list the reverse proxies' own "
                         "addresses or networks instead")
    if proxies:  # else mounted bare: not one test more on intake's path
        post, get = behind_proxies(post, proxies), behind_proxies(get, proxies)
    app.router.add_post("/hooks/{source}", post)
    app.router.add_get("/hooks/{source}", get)
    app.router.add_route("OPTIONS", "/hooks/{source}", hook_options)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_admin_routes(app)
    app.router.add_get("/metrics", metrics)
    for vendor in sorted({d.vendor for d in config.destinations.values() if d.own_sandbox}):
        factory = simulator_registry().get(vendor)
        if factory is None:
            raise ValueError(f"no simulator for vendor {vendor!r}")
        sim = factory()
        rt.simulators[vendor] = sim
        public = sim.app(guard=sandbox_guard(config.admin.token))
        app.add_subapp(f"/sandbox/{vendor}/", public)
    app.cleanup_ctx.append(tracing_context(rt))
    empty_folder = (from_folder and folder_errors is None and not mappings.mappings
                    and not config.mappings_allow_empty)
    app.cleanup_ctx.append(store_context(rt, store, folder_errors, empty_folder=empty_folder))
    app.cleanup_ctx.append(handlers_context(rt))
    app.cleanup_ctx.append(reload_context(MappingReloader(rt, lambda: load_mappings(config))))
    app.cleanup_ctx.append(sandbox_context(rt))
    if workers:
        app.cleanup_ctx.append(delivery_context(rt))
        app.cleanup_ctx.append(retention_context(rt))
    return app
