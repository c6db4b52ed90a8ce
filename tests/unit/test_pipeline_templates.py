"""Template compilation, sandboxed rendering, locale fallback and the renderer's cache."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from tidings.notification import Channel, Content, Notification
from tidings.pipelines import templates
from tidings.pipelines.templates import (
    Renderer,
    Template,
    TemplateError,
    TemplateNotFound,
    compile_template,
    environment,
    locale_chain,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Memory:
    """A TemplateSource over a dict; counts lookups so the cache can be seen working."""

    def __init__(self, *templates: Template) -> None:
        self.templates = {(t.tenant, t.name, t.channel, t.locale): t for t in templates}
        self.lookups = 0

    def put(self, template: Template) -> None:
        self.templates[(template.tenant, template.name, template.channel, template.locale)] = (
            template
        )

    async def find(
        self, name: str, channel: Channel, locales: tuple[str, ...], *, tenant: str
    ) -> Template | None:
        self.lookups += 1
        for locale in locales:
            for owner in (tenant, ""):
                found = self.templates.get((owner, name, channel, locale))
                if found is not None:
                    return found
        return None


def _template(body: str = "Hi {{ name }}", **fields: Any) -> Template:
    return Template(**{"name": "welcome", "channel": "email", "locale": "en", "body": body,
                       **fields})


def _render(template: Template, **data: Any) -> Content:
    return compile_template(environment(), template).render(data)


def _notification(locale: str = "en", **fields: Any) -> Notification:
    return Notification.model_validate({
        "type": "user.welcome",
        "recipient": {"user_id": "u1", "email": "ada@example.com", "locale": locale},
        "template": "welcome",
        "data": {"name": "Ada"},
        **fields,
    })


# -- locale chain ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("pt-BR", ("pt-BR", "pt", "en")),
        ("pt_br", ("pt-BR", "pt", "en")),
        ("zh-Hant-TW", ("zh-Hant-TW", "zh-Hant", "zh", "en")),
        ("en", ("en",)),
        ("en-GB", ("en-GB", "en")),
    ],
)
def test_locale_chain_goes_from_specific_to_the_default(locale: str, chain: tuple[str]) -> None:
    assert locale_chain(locale) == chain


def test_locale_chain_ends_with_the_given_default() -> None:
    assert locale_chain("pt-BR", default="es") == ("pt-BR", "pt", "es")


# -- rendering -------------------------------------------------------------------------------


def test_every_part_renders_with_the_data() -> None:
    template = _template(subject="Welcome {{ name }}", title="T {{ name }}",
                         html="<p>{{ name }}</p>")

    assert _render(template, name="Ada") == Content(
        subject="Welcome Ada", body="Hi Ada", html="<p>Ada</p>", title="T Ada"
    )


def test_only_the_html_part_is_autoescaped() -> None:
    template = _template(subject="{{ name }}", html="<p>{{ name }}</p>", body="{{ name }}")

    content = _render(template, name="<b>Tom & Jerry</b>")

    assert content.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert content.body == "<b>Tom & Jerry</b>"
    assert content.subject == "<b>Tom & Jerry</b>"


def test_an_undefined_variable_is_an_error_naming_template_channel_locale_and_name() -> None:
    with pytest.raises(TemplateError) as raised:
        _render(_template(locale="pt-BR", channel="sms"))

    message = str(raised.value)
    assert message.startswith("template 'welcome' (sms, pt-BR): body: UndefinedError")
    assert "'name' is undefined" in message
    assert (raised.value.name, raised.value.channel, raised.value.locale) == (
        "welcome", "sms", "pt-BR"
    )


def test_a_syntax_error_is_reported_when_compiling() -> None:
    with pytest.raises(TemplateError, match=r"\(email, en\): subject: syntax error: .*"):
        compile_template(environment(), _template(subject="{% if %}"))


def test_the_sandbox_refuses_unsafe_attribute_access() -> None:
    template = _template(body="{{ name.__class__.__mro__ }}")

    with pytest.raises(TemplateError, match="unsafe"):
        _render(template, name="x")


def test_the_sandbox_refuses_a_huge_range() -> None:
    template = _template(body="{% for i in range(10**9) %}x{% endfor %}")

    with pytest.raises(TemplateError, match="a range of 1,000,000,000 is over the 10,000"):
        _render(template)


@pytest.mark.parametrize(("body", "error"), [
    ("{{ 'x' * 400000000 }}", "a repetition of 400,000,000 items"),  # folded when compiled
    ("{{ name * n }}", "a repetition of 30,000,000 items"),  # built from the data
    ("{{ 2 ** 100000 }}", "an exponent of 100000"),
])
def test_the_sandbox_refuses_to_build_something_huge_and_says_what(body: str, error: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateError, match=error):
        _render(_template(body=body), name="abc", n=10_000_000)
    assert time.monotonic() - started < 1.0


def test_a_part_that_renders_over_a_mebibyte_is_an_error() -> None:
    body = "{% for i in range(10000) %}{{ name }}{% endfor %}"
    with pytest.raises(TemplateError, match="body: SecurityError: rendered over 1,048,576"):
        _render(_template(body=body), name="x" * 110)


def test_nested_loops_over_the_data_are_stopped_before_they_build_it_all() -> None:
    """3 000 x 3 000 pieces of 10 characters: 90 MB and seconds, had it been built first."""
    body = "{% for a in items %}{% for b in items %}{{ name }}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateError, match="rendered over 1,048,576 characters"):
        _render(_template(body=body), items=list(range(3000)), name="x" * 10)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("body", [
    "{% set all %}{% for a in items %}{{ name }}{% endfor %}{% endset %}{{ all|length }}",
    "{% macro all() %}{% for a in items %}{{ name }}{% endfor %}{% endmacro %}"
    "{{ all()|length }}",
], ids=["set block", "macro"])
def test_what_a_block_or_a_macro_builds_is_held_to_the_same_bound(body: str) -> None:
    with pytest.raises(TemplateError, match="rendered over 1,048,576 characters"):
        _render(_template(body=body), items=list(range(200_000)), name="x" * 10)


def test_a_part_slow_to_render_is_stopped_at_the_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(templates, "MAX_RENDER_S", 0.2)
    body = ("{% for a in items %}{% for b in items %}{% if a == b %}.{% endif %}{% endfor %}"
            "{% endfor %}")
    started = time.monotonic()
    with pytest.raises(TemplateError, match=r"body: SecurityError: took over 0.2 s to render"):
        _render(_template(body=body), items=list(range(5000)))
    assert time.monotonic() - started < 2.0


def test_an_exception_inside_rendering_becomes_a_template_error() -> None:
    with pytest.raises(TemplateError, match="ZeroDivisionError"):
        _render(_template(body="{{ 1 / n }}"), n=0)


def test_a_body_that_renders_empty_is_an_error() -> None:
    with pytest.raises(TemplateError, match="body rendered empty"):
        _render(_template(body="{{ name }}"), name="")


# -- the renderer ----------------------------------------------------------------------------


async def test_the_renderer_falls_back_along_the_locale_chain() -> None:
    source = Memory(_template(body="Olá {{ name }}", locale="pt"), _template())
    renderer = Renderer(source)

    assert (await renderer.render(_notification("pt-BR"), "email")).body == "Olá Ada"
    assert (await renderer.render(_notification("de"), "email")).body == "Hi Ada"


async def test_the_template_sees_the_recipient_and_type() -> None:
    renderer = Renderer(Memory(_template(body="{{ recipient.user_id }} {{ type }}")))

    assert (await renderer.render(_notification(), "email")).body == "u1 user.welcome"


async def test_a_tenants_own_template_wins_over_the_shared_one() -> None:
    source = Memory(_template(), _template(body="Acme says hi", tenant="acme"))
    renderer = Renderer(source)

    assert (await renderer.render(_notification(tenant="acme"), "email")).body == "Acme says hi"
    assert (await renderer.render(_notification(tenant="other"), "email")).body == "Hi Ada"


async def test_pre_rendered_content_is_used_as_is() -> None:
    notification = _notification(template=None, data={}, content={"body": "ready"})

    assert await Renderer(Memory()).render(notification, "sms") == Content(body="ready")


async def test_a_missing_template_names_the_locales_it_tried() -> None:
    with pytest.raises(TemplateNotFound, match="in locales pt-BR, pt, en"):
        await Renderer(Memory()).render(_notification("pt-BR"), "email")


async def test_the_cache_keeps_the_most_recently_used_templates_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Renderer, "CACHE_SIZE", 3)
    source = Memory(*(_template(name=f"t{i}") for i in range(5)))
    renderer = Renderer(source)
    for i in (0, 1, 2, 0, 3, 4):  # t0 used again: t1 and t2 are the oldest
        await renderer.render(_notification(template=f"t{i}"), "email")
    source.lookups = 0

    await renderer.render(_notification(template="t0"), "email")
    await renderer.render(_notification(template="t1"), "email")

    assert source.lookups == 1, "t0 was still cached; t1 had to be loaded again"


async def test_a_cached_template_costs_no_lookup_until_the_recheck_time() -> None:
    clock = Clock()
    source = Memory(_template())
    renderer = Renderer(source, recheck_s=30, clock=clock)

    for _ in range(3):
        await renderer.render(_notification(), "email")
    clock.now = 31
    await renderer.render(_notification(), "email")

    assert source.lookups == 2


async def test_a_new_version_is_picked_up_at_the_recheck() -> None:
    clock = Clock()
    source = Memory(_template())
    renderer = Renderer(source, recheck_s=30, clock=clock)
    await renderer.render(_notification(), "email")

    source.put(_template(body="Hello {{ name }}", version=2))
    assert (await renderer.render(_notification(), "email")).body == "Hi Ada"
    clock.now = 31
    assert (await renderer.render(_notification(), "email")).body == "Hello Ada"


async def test_an_unchanged_version_is_not_recompiled() -> None:
    clock = Clock()
    renderer = Renderer(Memory(_template()), recheck_s=30, clock=clock)
    first = await renderer.compiled("welcome", "email", "en", tenant="default")

    clock.now = 31
    assert await renderer.compiled("welcome", "email", "en", tenant="default") is first


async def test_invalidate_forgets_the_cache_at_once() -> None:
    source = Memory(_template())
    renderer = Renderer(source)
    await renderer.render(_notification(), "email")

    source.put(replace(_template(body="New {{ name }}"), version=2))
    renderer.invalidate("welcome")

    assert (await renderer.render(_notification(), "email")).body == "New Ada"


async def test_a_broken_template_is_not_recompiled_for_every_message() -> None:
    source = Memory(_template(body="{% if %}"))
    renderer = Renderer(source)

    for _ in range(3):
        with pytest.raises(TemplateError, match="syntax error"):
            await renderer.render(_notification(), "email")

    assert source.lookups == 1


async def test_render_cost_with_a_warm_cache_is_tens_of_microseconds() -> None:
    renderer = Renderer(Memory(_template(subject="Welcome {{ name }}",
                                         html="<p>Hi {{ name }}, your order {{ order }}</p>")))
    notification = _notification(data={"name": "Ada", "order": "A-1"})
    await renderer.render(notification, "email")

    rounds = 5000
    started = time.perf_counter()
    for _ in range(rounds):
        await renderer.render(notification, "email")
    per_call_us = (time.perf_counter() - started) / rounds * 1e6

    print(f"\nrender (subject+body+html, warm cache): {per_call_us:.1f} µs per call")
    assert per_call_us < 500  # generous: shared, noisy machines; typical is ~20-40 µs
