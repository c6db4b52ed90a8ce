"""The template store and the renderer against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.notification import Notification
from tidings.pipelines.templates import Renderer, TemplateError, TemplateStore
from tidings.tables import templates

pytestmark = [pytest.mark.postgres]


def _notification(locale: str = "en", tenant: str = "default") -> Notification:
    return Notification.model_validate({
        "type": "order.shipped",
        "recipient": {"user_id": "u1", "email": "ada@example.com", "locale": locale},
        "template": "shipped",
        "data": {"name": "Ada", "order": "A-7"},
        "tenant": tenant,
    })


async def test_put_then_get_returns_the_template(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    put = await store.put("shipped", "email", "pt_br", subject="Pedido {{ order }}",
                          body="Olá {{ name }}", html="<p>Olá</p>")

    got = await store.get("shipped", "email", "pt-BR")

    assert got == put
    assert (got.locale, got.version, got.subject, got.title) == ("pt-BR", 1, "Pedido {{ order }}",
                                                                None)


async def test_put_again_replaces_the_parts_and_bumps_the_version(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    await store.put("shipped", "sms", "en", body="v1", title="t")

    again = await store.put("shipped", "sms", "en", body="v2")

    assert (again.body, again.title, again.version) == ("v2", None, 2)


@pytest.mark.parametrize(
    ("channel", "locale", "body", "reason"),
    [
        ("fax", "en", "x", "unknown channel"),
        ("sms", "english!", "x", "not a locale"),
        ("sms", "en", "", "body must not be empty"),
    ],
)
async def test_put_refuses_what_cannot_be_a_template(
    engine: AsyncEngine, channel: Any, locale: str, body: str, reason: str
) -> None:
    with pytest.raises(TemplateError, match=reason):
        await TemplateStore(engine).put("shipped", channel, locale, body=body)


@pytest.mark.parametrize(
    ("name", "tenant", "reason"),
    [
        ("order shipped", "", "name: use 1-200 printable characters without spaces"),
        ("s" * 3_000, "", "name: use 1-200 printable characters"),
        ("shipped", "t" * 201, "tenant: use 1-200 printable characters"),
    ],
)
async def test_put_refuses_a_name_or_tenant_no_notification_could_carry(
    engine: AsyncEngine, name: str, tenant: str, reason: str
) -> None:
    # The contract's rule for keys: such a template would never be found, and a name of
    # thousands of characters would overflow the templates' unique index.
    with pytest.raises(TemplateError, match=reason):
        await TemplateStore(engine).put(name, "sms", "en", body="x", tenant=tenant)


async def test_get_without_a_template_returns_none(engine: AsyncEngine) -> None:
    assert await TemplateStore(engine).get("nothing", "email", "en") is None


async def test_find_prefers_locale_over_tenant(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    await store.put("shipped", "email", "en", body="acme en", tenant="acme")
    await store.put("shipped", "email", "pt", body="shared pt")

    found = await store.find("shipped", "email", ("pt-BR", "pt", "en"), tenant="acme")

    assert found is not None
    assert found.body == "shared pt"


async def test_the_database_refuses_an_unknown_channel_and_an_empty_body(
    engine: AsyncEngine,
) -> None:
    for row, constraint in (
        ({"channel": "fax", "body": "x"}, "ck_templates_channel"),
        ({"channel": "sms", "body": ""}, "ck_templates_body_not_empty"),
    ):
        with pytest.raises(IntegrityError, match=constraint):
            async with engine.begin() as conn:
                await conn.execute(insert(templates), [{"name": "n", "locale": "en", **row}])


async def test_the_renderer_renders_from_the_database_with_fallback(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    await store.put("shipped", "email", "en", subject="Order {{ order }}", body="Hi {{ name }}",
                    html="<b>{{ name }}</b>")
    await store.put("shipped", "email", "pt", subject="Pedido {{ order }}", body="Olá {{ name }}")
    renderer = Renderer(store)

    pt = await renderer.render(_notification("pt-BR"), "email")
    de = await renderer.render(_notification("de"), "email")

    assert (pt.subject, pt.body, pt.html) == ("Pedido A-7", "Olá Ada", None)
    assert (de.subject, de.body, de.html) == ("Order A-7", "Hi Ada", "<b>Ada</b>")


async def test_an_update_is_rendered_after_invalidate(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    await store.put("shipped", "sms", "en", body="old {{ name }}")
    renderer = Renderer(store)
    assert (await renderer.render(_notification(), "sms")).body == "old Ada"

    await store.put("shipped", "sms", "en", body="new {{ name }}")
    assert (await renderer.render(_notification(), "sms")).body == "old Ada"  # cached
    renderer.invalidate()

    assert (await renderer.render(_notification(), "sms")).body == "new Ada"


async def test_an_update_is_rendered_after_the_recheck_interval(engine: AsyncEngine) -> None:
    store = TemplateStore(engine)
    await store.put("shipped", "sms", "en", body="old {{ name }}")
    renderer = Renderer(store, recheck_s=0)
    await renderer.render(_notification(), "sms")

    await store.put("shipped", "sms", "en", body="new {{ name }}")

    assert (await renderer.render(_notification(), "sms")).body == "new Ada"


async def test_a_stored_template_that_fails_names_template_channel_and_locale(
    engine: AsyncEngine,
) -> None:
    await TemplateStore(engine).put("shipped", "push", "pt", body="{{ missing }}", title="t")

    with pytest.raises(TemplateError) as raised:
        await Renderer(TemplateStore(engine)).render(_notification("pt-BR"), "push")

    assert str(raised.value).startswith("template 'shipped' (push, pt): body: UndefinedError")
