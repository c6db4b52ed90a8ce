"""Templates stored in PostgreSQL, rendered by one sandboxed Jinja2 environment into Content.

Lookup order for (tenant, name, channel, locale): each locale of the fallback chain
(``pt-BR`` → ``pt`` → the default locale), and within one locale the tenant's own template
before the shared one (tenant ``''``). Compiled templates are cached in memory; a cached
resolution is re-checked against the database after ``recheck_s`` and recompiled only when the
row's ``version`` moved, so the hot path does no I/O and no compilation.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Protocol, cast, get_args

from jinja2 import StrictUndefined
from jinja2 import Template as Jinja
from jinja2 import TemplateError as JinjaError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError
from sqlalchemy import Row, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.errors import TidingsError
from tidings.notification import Channel, Content, Notification, canonical_locale, check_key
from tidings.tables.templates import templates

PARTS = ("subject", "body", "html", "title")
SHARED = ""
"""The tenant of a template every tenant uses unless it has its own."""


class TemplateError(TidingsError):
    """A template that is missing, does not compile, or fails to render; says which and why."""

    def __init__(self, name: str, channel: str, locale: str, reason: str) -> None:
        super().__init__(f"template {name!r} ({channel}, {locale}): {reason}")
        self.name, self.channel, self.locale, self.reason = name, channel, locale, reason

    def fresh(self) -> TemplateError:
        """A new instance with no traceback, to raise again without growing the old one."""
        return type(self)(self.name, self.channel, self.locale, self.reason)


class TemplateNotFound(TemplateError):
    """No template in any locale of the fallback chain, for the tenant or shared."""


@dataclass(frozen=True, slots=True)
class Template:
    """One stored template: the parts a channel uses, ``body`` always."""

    name: str
    channel: Channel
    locale: str
    body: str
    subject: str | None = None
    html: str | None = None
    title: str | None = None
    tenant: str = SHARED
    version: int = 1
    updated_at: datetime | None = None


def locale_chain(locale: str, default: str = "en") -> tuple[str, ...]:
    """``zh-Hant-TW`` → ``zh-Hant-TW, zh-Hant, zh, en``: most specific first, default last."""
    parts = canonical_locale(locale).split("-")
    chain = ["-".join(parts[:end]) for end in range(len(parts), 0, -1)]
    return tuple(dict.fromkeys([*chain, canonical_locale(default)]))


def _html_only(name: str | None) -> bool:
    return name is not None and name.endswith(":html")


# What one template may build: a rendered part, a repeated string or list, a range; and how
# long one part may take to render (checked as its output grows).
MAX_RENDERED = 1 << 20
MAX_RANGE = 10_000
MAX_RENDER_S = 1.0
_CLOCK_EVERY = 256  # pieces of output between looks at the size and the clock


def _joined(pieces: Iterable[str]) -> str:
    """Output pieces joined, refused as soon as they grow past MAX_RENDERED or take longer
    than MAX_RENDER_S: a loop must not build gigabytes before it is judged. Taken in slices,
    to cost little more than the plain join it replaces."""
    deadline = time.monotonic() + MAX_RENDER_S
    pieces = iter(pieces)
    out = list(islice(pieces, _CLOCK_EVERY))
    if len(out) < _CLOCK_EVERY:  # all of it, as for most parts: one look at its size
        text = "".join(out)
        if len(text) > MAX_RENDERED:
            raise SecurityError(f"rendered over {MAX_RENDERED:,} characters")
        return text
    size = 0
    chunk = out[:]
    while chunk:
        size += sum(map(len, chunk))
        if size > MAX_RENDERED:
            raise SecurityError(f"rendered over {MAX_RENDERED:,} characters")
        if time.monotonic() > deadline:
            raise SecurityError(f"took over {MAX_RENDER_S:g} s to render")
        chunk = list(islice(pieces, _CLOCK_EVERY))
        out += chunk
    return "".join(out)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with ``*`` and ``**`` checked when they run (Jinja would otherwise
    work out ``'x' * 400000000`` while compiling: seconds and gigabytes) and a smaller range.
    A part's output is bounded as it is produced, a block's or a macro's once it is collected
    (see :func:`_joined`). A filter or a ``%`` format can still build one large string at
    once, and a loop that outputs nothing can run long over data it is given: templates are
    code, to be stored by people trusted to write them."""

    intercepted_binops = frozenset({"*", "**"})
    # What a {% set %} block, a macro or a {% filter %} block outputs is joined here (their
    # pieces are first collected in a list): judged by the same bounds as a part.
    concat = staticmethod(_joined)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (isinstance(seq, str | list | tuple) and isinstance(times, int)
                        and len(seq) * times > MAX_RENDERED):
                    raise SecurityError(f"a repetition of {len(seq) * times:,} items is over"
                                        f" the {MAX_RENDERED:,} a template may build")
        elif isinstance(right, int | float) and abs(right) > 1_000:
            raise SecurityError(f"an exponent of {right} is over the 1 000 a template may use")
        return super().call_binop(context, operator, left, right)


def _range(*bounds: int) -> range:
    numbers = range(*bounds)
    if len(numbers) > MAX_RANGE:
        raise SecurityError(f"a range of {len(numbers):,} is over the {MAX_RANGE:,} a template"
                            " may loop over")
    return numbers


def environment() -> SandboxedEnvironment:
    """The sandbox every template renders in: undefined names fail, HTML parts autoescape."""
    env = _Sandbox(
        undefined=StrictUndefined, autoescape=_html_only, auto_reload=False, cache_size=0
    )
    env.globals["range"] = _range
    return env


@dataclass(frozen=True, slots=True)
class Compiled:
    """A template compiled once; :meth:`render` turns data into Content."""

    template: Template
    parts: tuple[tuple[str, Jinja], ...]

    def render(self, context: Mapping[str, Any]) -> Content:
        t = self.template
        rendered: dict[str, str] = {}
        # The globals and the data merged once for every part; each part still renders in a
        # context of its own (what one part sets stays in it).
        parent = {**self.parts[0][1].globals, **context} if self.parts else {}
        for part, jinja in self.parts:
            try:
                rendered[part] = _joined(
                    jinja.root_render_func(jinja.new_context(parent, shared=True)))
            except MemoryError:  # the process's trouble, not this template's alone
                raise
            # Not only Jinja's errors: a filter or a method on the data can raise anything,
            # and it is still this template failing on this data, never a crashed worker.
            except Exception as exc:
                raise TemplateError(t.name, t.channel, t.locale,
                                    f"{part}: {type(exc).__name__}: {exc}") from None
        try:
            return Content(**rendered)
        except ValidationError:
            raise TemplateError(t.name, t.channel, t.locale, "body rendered empty") from None


def compile_template(env: SandboxedEnvironment, template: Template) -> Compiled:
    """Compile every part of ``template``; a syntax error becomes a TemplateError."""
    parts: list[tuple[str, Jinja]] = []
    for part in PARTS:
        source = getattr(template, part)
        if source is None:
            continue
        label = f"{template.name}/{template.channel}/{template.locale}:{part}"
        try:
            # compile() with a name, not from_string(): the name decides autoescaping.
            code = env.compile(source, name=label)
        except JinjaError as exc:
            raise TemplateError(template.name, template.channel, template.locale,
                                f"{part}: syntax error: {exc}") from None
        # Globals as a plain dict, not Jinja's ChainMap: every render copies them.
        parts.append((part, env.template_class.from_code(env, code, dict(env.make_globals(None)))))
    return Compiled(template, tuple(parts))


def _template(row: Row[Any]) -> Template:
    return Template(
        name=row.name, channel=row.channel, locale=row.locale, body=row.body,
        subject=row.subject, html=row.html, title=row.title, tenant=row.tenant,
        version=row.version, updated_at=row.updated_at,
    )


class TemplateSource(Protocol):
    """Where a Renderer finds templates: :class:`TemplateStore`, or a dict in tests."""

    async def find(
        self, name: str, channel: Channel, locales: tuple[str, ...], *, tenant: str
    ) -> Template | None: ...


class TemplateStore:
    """Templates in PostgreSQL: upsert, exact get, and the fallback lookup renderers use."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(
        self,
        name: str,
        channel: Channel,
        locale: str,
        *,
        body: str,
        subject: str | None = None,
        html: str | None = None,
        title: str | None = None,
        tenant: str = SHARED,
    ) -> Template:
        """Create or replace a template; every replacement bumps its ``version``."""
        if channel not in get_args(Channel):
            raise TemplateError(name, channel, locale, "unknown channel")
        # The contract's rule for the keys that look a template up: a name or tenant a
        # notification cannot carry would never be found (and a long one overflow the index).
        keys = {"name": name} if tenant == SHARED else {"name": name, "tenant": tenant}
        for what, key in keys.items():
            try:
                check_key(key)
            except ValueError as exc:
                raise TemplateError(name[:40], channel, locale, f"{what}: {exc}") from None
        if not body:
            raise TemplateError(name, channel, locale, "body must not be empty")
        try:
            locale = canonical_locale(locale)
        except ValueError as exc:
            raise TemplateError(name, channel, locale, str(exc)) from None
        values = {"tenant": tenant, "name": name, "channel": channel,
                  "locale": locale, "subject": subject, "body": body,
                  "html": html, "title": title}
        stmt = insert(templates).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "name", "channel", "locale"],
            set_={**{part: stmt.excluded[part] for part in PARTS},
                  "version": templates.c.version + 1, "updated_at": func.now()},
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(stmt.returning(templates))).one()
        return _template(row)

    async def get(
        self, name: str, channel: Channel, locale: str, *, tenant: str = SHARED
    ) -> Template | None:
        """Exactly this template, with no fallback; None if there is none."""
        c = templates.c
        query = select(templates).where(
            c.tenant == tenant, c.name == name, c.channel == channel,
            c.locale == canonical_locale(locale),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _template(row)

    async def find(
        self, name: str, channel: Channel, locales: tuple[str, ...], *, tenant: str
    ) -> Template | None:
        """The best template along ``locales`` (tenant's own first in each); one query."""
        c = templates.c
        query = select(templates).where(
            c.tenant.in_(dict.fromkeys([tenant, SHARED])), c.name == name,
            c.channel == channel, c.locale.in_(locales),
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        rank = {(t, loc): i for i, (loc, t) in
                enumerate((loc, t) for loc in locales for t in (tenant, SHARED))}
        best = min(rows, key=lambda r: rank[(r.tenant, r.locale)], default=None)
        return None if best is None else _template(best)


@dataclass(slots=True)
class _Cached:
    # A TemplateError is cached too: a broken or missing template must not cost a query and a
    # compilation on every message until someone fixes it.
    result: Compiled | TemplateError
    checked_at: float


class Renderer:
    """Turns (Notification, channel) into Content, from cached compiled templates.

    The context a template sees is the notification's ``data`` plus ``recipient`` (the
    Recipient) and ``type``. A template that is missing, broken or fails on the data raises
    TemplateError (permanent: record it as a failure); a database error propagates as it is
    (transient: let the message be retried).
    """

    CACHE_SIZE = 10_000  # compiled templates kept; the least recently used go first

    def __init__(
        self,
        store: TemplateSource,
        *,
        default_locale: str = "en",
        recheck_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._default = canonical_locale(default_locale)
        self._recheck_s = recheck_s
        self._clock = clock
        self._env = environment()
        # The least recently used first: the keys come from producers (names, locales,
        # tenants), so without a bound a long-running worker would keep every one it met.
        self._cache: OrderedDict[tuple[str, str, str, str], _Cached] = OrderedDict()

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached templates (all, or those named ``name``): the next render reloads."""
        if name is None:
            self._cache.clear()
        else:
            for key in [k for k in self._cache if k[1] == name]:
                del self._cache[key]

    async def render(self, notification: Notification, channel: Channel) -> Content:
        """The content of ``notification`` on ``channel``: pre-rendered, or its template's."""
        if notification.content is not None:
            return notification.content
        name = cast(str, notification.template)
        compiled = await self.compiled(
            name, channel, notification.recipient.locale, tenant=notification.tenant
        )
        context = {**notification.data, "recipient": notification.recipient,
                   "type": notification.type}
        return compiled.render(context)

    async def compiled(
        self, name: str, channel: Channel, locale: str, *, tenant: str
    ) -> Compiled:
        """The compiled template for this request, from the cache when it is fresh."""
        key = (tenant, name, channel, locale)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is None or now - cached.checked_at >= self._recheck_s:
            cached = await self._load(name, channel, locale, tenant, cached)
            cached.checked_at = now
            self._cache[key] = cached
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if isinstance(cached.result, TemplateError):
            raise cached.result.fresh()
        return cached.result

    async def _load(
        self, name: str, channel: Channel, locale: str, tenant: str, cached: _Cached | None
    ) -> _Cached:
        chain = locale_chain(locale, self._default)
        found = await self._store.find(name, channel, chain, tenant=tenant)
        if found is None:
            return _Cached(TemplateNotFound(
                name, channel, locale,
                f"no template for tenant {tenant!r} or shared in locales {', '.join(chain)}",
            ), 0.0)
        if (cached is not None and isinstance(cached.result, Compiled)
                and _same(cached.result.template, found)):
            return cached
        try:
            return _Cached(compile_template(self._env, found), 0.0)
        except TemplateError as exc:
            return _Cached(exc.fresh(), 0.0)


def _same(a: Template, b: Template) -> bool:
    return (a.tenant, a.locale, a.version, a.updated_at) == (b.tenant, b.locale, b.version,
                                                              b.updated_at)
