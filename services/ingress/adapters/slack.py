"""Slack: the Events API and interactivity requests of one Slack app per integration.

Route: ``POST /webhooks/slack/{integration_id}`` (set it as the app's Event Subscriptions
*and* Interactivity request URL). Credentials: ``signing_secret`` and ``bot_token``, plus
optionally our own app's identities ``app_id``, ``bot_user_id`` and ``bot_id``.

Verification
    Slack's v0 signature (``X-Slack-Signature`` over ``v0:{X-Slack-Request-Timestamp}:{body}``)
    is checked with slack-sdk's :class:`~slack_sdk.signature.SignatureVerifier`, clocked at
    the ``now`` given to :meth:`SlackAdapter.verify`. A timestamp further than
    ``settings.slack_timestamp_tolerance_s`` from now is refused as ``stale_timestamp``
    (checked first, so a replay is named as such); the SDK also enforces its own fixed
    five-minute window, so a tolerance above 300 s is capped at 300 s. A missing,
    malformed or wrong signature is ``bad_signature``. Both are 401.

What is published (``message.inbound``)
    * ``message`` events: plain messages, ``file_share`` (files become attachments),
      ``thread_broadcast`` and ``me_message``; and ``app_mention`` events.
    * ``external_id`` is ``"{channel}:{ts}"``, the identity Slack itself uses for a message.
    * ``conversation_key`` is the channel id, except for a threaded message (``thread_ts``
      present and different from its own ``ts``), whose key is ``"{channel}:{thread_ts}"``:
      each thread is a conversation of its own, and the thread's parent message belongs to
      the channel's conversation. ``thread_id`` is ``thread_ts`` and ``reply_to`` the
      parent's external id for threaded messages.
    * ``event_id`` is derived from the integration, channel and ``ts`` only, so the
      ``message`` and ``app_mention`` events Slack sends for one message that mentions the
      bot, and Slack's retries (``X-Slack-Retry-Num``), map to one event id and are
      published once. ``delivery_id`` is the envelope's ``event_id`` of whichever
      delivery got through first.
    * ``message_changed`` is an edit: a ``message.inbound`` for the original message's
      external id with the new text, ``edited_at`` from ``message.edited.ts`` (else the
      event's ``ts``) and ``sent_at`` of the original; its event id adds an edit marker
      (the edit's ts), so it differs from the original's yet is stable across retries.
      A change without ``edited`` whose text is unchanged (link unfurls, a thread parent's
      reply counters) is not an edit and is ignored.
    * Button clicks (``block_actions`` posted as ``application/x-www-form-urlencoded``
      ``payload=``) in a message become ``message_type="callback"`` events with
      ``callback_data`` = the button's ``value``; ``reply_to`` is the message holding the
      button. Other interactions (selects, modals, shortcuts, slash commands) are ignored.
      Interactivity requests are answered with an empty 200, as Slack expects.

Acknowledged, not published (counted in ``ignored``)
    Messages of bots (``bot_id`` or subtype ``bot_message``) and of our own app (its
    ``app_id``/``bot_id``/``bot_user_id`` from the credentials, the envelope's
    ``api_app_id`` and the bot user of its ``authorizations``), so replies never loop;
    ``message_deleted`` (deletions are not part of the event model yet); every other
    message subtype (``channel_join``, ...) and event type (``reaction_added``, ...);
    ``app_rate_limited`` notices.

``url_verification`` is answered with the bare challenge as text, after the signature
check. A body that is not JSON (or form-encoded ``payload=`` JSON) or not Slack's
envelope shape is refused with 400. The envelope's verification ``token`` is never
copied into an event's ``raw``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError
from slack_sdk.signature import Clock, SignatureVerifier

from services.ingress.pipeline import AdapterResult, Rejected, WebhookRequest
from services.ingress.webhooks import webhook_handler
from shared.events import Attachment, Channel, MessageInbound, derive_event_id
from shared.integrations import Integration
from shared.settings import Settings

ROUTE = "/webhooks/slack/{integration_id}"
#: slack-sdk's SignatureVerifier refuses timestamps older than this, whatever we configure.
SDK_WINDOW_S = 300
#: Message subtypes that are a person's message.
MESSAGE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
_TS = re.compile(r"^\d{1,11}(\.\d{1,9})?$")
_KIND = re.compile(r"[^a-z0-9_]+")


class _FixedClock(Clock):
    """The SDK's clock, stopped at the ``now`` the pipeline passed to ``verify``."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def _bad(message: str, reason: str = "not_slack") -> Rejected:
    return Rejected(400, reason, message)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _kind(name: object) -> str:
    """A metric-safe label for an ignored event or subtype name."""
    text = _KIND.sub("_", str(name).lower())[:48]
    return text or "unknown"


def _str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def slack_time(ts: str) -> datetime:
    """A Slack ``ts`` ("1355517523.000005") as an aware datetime, to the microsecond."""
    if not _TS.match(ts):
        raise _bad(f"not a Slack timestamp: {ts[:40]!r}")
    seconds, _, fraction = ts.partition(".")
    micros = int((fraction + "000000")[:6])
    return datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=micros)


def _attachment(file: Mapping[str, Any]) -> Attachment | None:
    file_id = _str(file, "id")
    if file_id is None:
        return None
    mime = _str(file, "mimetype")
    major = (mime or "").split("/", 1)[0]
    kind = major if major in ("image", "audio", "video") else "document"
    size = file.get("size")
    return Attachment(
        kind=kind,  # type: ignore[arg-type]
        media_id=file_id,
        url=_str(file, "url_private_download") or _str(file, "url_private"),
        mime_type=mime,
        file_name=_str(file, "name"),
        size_bytes=size if isinstance(size, int) and size >= 0 else None,
        caption=_str(file, "title"),
    )


class SlackAdapter:
    """Slack's Events API and interactivity payloads → ``message.inbound`` events."""

    channel: Channel = "slack"

    def __init__(self, *, timestamp_tolerance_s: int = SDK_WINDOW_S) -> None:
        self.tolerance_s = min(timestamp_tolerance_s, SDK_WINDOW_S)

    # -- verification -------------------------------------------------------------------

    def verify(self, request: WebhookRequest, *, now: float) -> None:
        timestamp = _header(request.headers, "X-Slack-Request-Timestamp")
        signature = _header(request.headers, "X-Slack-Signature")
        if not timestamp or not signature:
            raise Rejected(401, "bad_signature", "missing Slack signature headers")
        try:
            sent = int(timestamp)
        except ValueError:
            raise Rejected(401, "bad_signature", "malformed Slack request timestamp") from None
        if abs(now - sent) > self.tolerance_s:
            raise Rejected(401, "stale_timestamp", "Slack request timestamp outside the window")
        verifier = SignatureVerifier(
            request.integration.credentials["signing_secret"], clock=_FixedClock(now)
        )
        try:
            valid = verifier.is_valid(body=request.body, timestamp=timestamp, signature=signature)
        except UnicodeDecodeError:
            valid = False
        if not valid:
            raise Rejected(401, "bad_signature", "Slack signature does not match")

    # -- parsing --------------------------------------------------------------------------

    def parse(self, request: WebhookRequest) -> AdapterResult:
        try:
            return self._parse(request)
        except ValidationError as exc:  # e.g. an id longer than the event model allows
            count = exc.error_count()
            raise _bad(f"Slack payload does not fit the event model ({count} error(s))") from None

    def _parse(self, request: WebhookRequest) -> AdapterResult:
        content_type = (_header(request.headers, "Content-Type") or "").lower()
        if content_type.startswith("application/x-www-form-urlencoded"):
            return self._parse_form(request)
        try:
            envelope = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise _bad("body is not JSON", "malformed") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            raise _bad("not a Slack Events API envelope")
        kind = envelope["type"]
        if kind == "url_verification":
            challenge = envelope.get("challenge")
            if not isinstance(challenge, str) or not challenge:
                raise _bad("url_verification without a challenge")
            return AdapterResult(response=challenge)
        if kind == "event_callback":
            return self._parse_event(request.integration, envelope)
        return AdapterResult(ignored=(_kind(kind),))

    def _parse_event(self, integration: Integration, envelope: dict[str, Any]) -> AdapterResult:
        event = envelope.get("event")
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise _bad("event_callback without an event")
        event_type = event["type"]
        if event_type not in ("message", "app_mention"):
            return AdapterResult(ignored=(_kind(event_type),))
        subtype = event.get("subtype")
        if subtype == "message_changed":
            return self._parse_edit(integration, envelope, event)
        if subtype == "message_deleted":
            return AdapterResult(ignored=("message_deleted",))
        skip = self._skip(integration, envelope, event)
        if skip:
            return AdapterResult(ignored=(skip,))
        channel, ts = self._location(event, event)
        inbound = self._inbound(
            integration,
            envelope,
            message=event,
            channel=channel,
            ts=ts,
            event_id=derive_event_id("slack", integration.id, channel, ts),
        )
        if inbound is None:
            return AdapterResult(ignored=("no_sender",))
        return AdapterResult(events=(inbound,))

    def _parse_edit(
        self, integration: Integration, envelope: dict[str, Any], event: dict[str, Any]
    ) -> AdapterResult:
        message = event.get("message")
        if not isinstance(message, dict):
            raise _bad("message_changed without a message")
        skip = self._skip(integration, envelope, message)
        if skip:
            return AdapterResult(ignored=(skip,))
        channel, ts = self._location(event, message)
        edited = message.get("edited")
        previous = event.get("previous_message")
        if not isinstance(edited, dict) and (
            isinstance(previous, dict) and previous.get("text") == message.get("text")
        ):
            return AdapterResult(ignored=("message_changed_unedited",))
        edit_ts = (_str(edited, "ts") if isinstance(edited, dict) else None) or _str(event, "ts")
        if edit_ts is None:
            raise _bad("message_changed without a timestamp")
        inbound = self._inbound(
            integration,
            envelope,
            message=message,
            channel=channel,
            ts=ts,
            event_id=derive_event_id("slack", integration.id, channel, ts, "edit", edit_ts),
            edited_at=slack_time(edit_ts),
        )
        if inbound is None:
            return AdapterResult(ignored=("no_sender",))
        return AdapterResult(events=(inbound,))

    @staticmethod
    def _location(event: Mapping[str, Any], message: Mapping[str, Any]) -> tuple[str, str]:
        channel, ts = _str(event, "channel"), _str(message, "ts")
        if channel is None or ts is None:
            raise _bad("message event without channel or ts")
        slack_time(ts)  # validates
        return channel, ts

    @staticmethod
    def _skip(
        integration: Integration, envelope: Mapping[str, Any], message: Mapping[str, Any]
    ) -> str | None:
        """Why this message is not published (ours, a bot's, a non-message subtype), or None."""
        creds = integration.credentials
        own_apps = {creds.get("app_id"), _str(envelope, "api_app_id")} - {None, ""}
        own_users = {creds.get("bot_user_id")} - {None, ""}
        for auth in envelope.get("authorizations") or ():
            if isinstance(auth, dict) and auth.get("is_bot") and _str(auth, "user_id"):
                own_users.add(auth["user_id"])
        profile = message.get("bot_profile")
        apps = {
            _str(message, "app_id"),
            _str(profile, "app_id") if isinstance(profile, dict) else None,
        }
        bot_id = _str(message, "bot_id")
        if (
            apps & own_apps
            or (bot_id is not None and bot_id == creds.get("bot_id"))
            or _str(message, "user") in own_users
        ):
            return "own_message"
        subtype = message.get("subtype")
        if bot_id is not None or subtype == "bot_message":
            return "bot_message"
        if subtype not in MESSAGE_SUBTYPES:
            return _kind(subtype)
        return None

    @staticmethod
    def _inbound(
        integration: Integration,
        envelope: dict[str, Any],
        *,
        message: Mapping[str, Any],
        channel: str,
        ts: str,
        event_id: Any,
        edited_at: datetime | None = None,
    ) -> MessageInbound | None:
        user = _str(message, "user")
        if user is None:
            return None
        thread_ts = _str(message, "thread_ts")
        threaded = thread_ts is not None and thread_ts != ts
        files = message.get("files")
        found = (_attachment(f) for f in (files or ()) if isinstance(f, dict))
        attachments = tuple(a for a in found if a is not None) if isinstance(files, list) else ()
        text = _str(message, "text")
        message_type = "text"
        if not text and attachments:
            message_type = attachments[0].kind
        profile = message.get("user_profile")
        sender_name = None
        if isinstance(profile, dict):
            sender_name = _str(profile, "display_name") or _str(profile, "real_name")
        return MessageInbound(
            event_id=event_id,
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="slack",
            conversation_key=f"{channel}:{thread_ts}" if threaded else channel,
            external_id=f"{channel}:{ts}",
            delivery_id=_str(envelope, "event_id"),
            sender_id=user,
            sender_name=sender_name,
            text=text,
            message_type=message_type,  # type: ignore[arg-type]
            attachments=attachments,
            reply_to=f"{channel}:{thread_ts}" if threaded else None,
            thread_id=thread_ts if threaded else None,
            edited_at=edited_at,
            sent_at=slack_time(ts),
            raw={k: v for k, v in envelope.items() if k != "token"},
        )

    # -- interactivity ---------------------------------------------------------------------

    def _parse_form(self, request: WebhookRequest) -> AdapterResult:
        try:
            form = dict(
                urllib.parse.parse_qsl(
                    request.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False
                )
            )
        except (UnicodeDecodeError, ValueError):
            raise _bad("form body is not UTF-8", "malformed") from None
        if "payload" not in form:
            if "command" in form:  # a slash command: not part of the event model
                return AdapterResult(response="", ignored=("slash_command",))
            raise _bad("form body without payload")
        try:
            payload = orjson.loads(form["payload"])
        except orjson.JSONDecodeError:
            raise _bad("interactivity payload is not JSON", "malformed") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise _bad("not a Slack interactivity payload")
        if payload["type"] != "block_actions":
            return AdapterResult(response="", ignored=(_kind(payload["type"]),))
        return self._parse_actions(request.integration, payload)

    @staticmethod
    def _parse_actions(integration: Integration, payload: dict[str, Any]) -> AdapterResult:
        container = payload.get("container")
        container = container if isinstance(container, dict) else {}
        message = payload.get("message")
        message = message if isinstance(message, dict) else {}
        channel_obj = payload.get("channel")
        channel = _str(container, "channel_id") or (
            _str(channel_obj, "id") if isinstance(channel_obj, dict) else None
        )
        message_ts = _str(container, "message_ts") or _str(message, "ts")
        user_obj = payload.get("user")
        user = _str(user_obj, "id") if isinstance(user_obj, dict) else None
        actions = payload.get("actions")
        if not isinstance(actions, list):
            raise _bad("block_actions without actions")
        if channel is None or message_ts is None or user is None:
            # e.g. an action in a modal (container "view"): no conversation to put it in
            return AdapterResult(response="", ignored=("action_outside_message",))
        slack_time(message_ts)
        thread_ts = _str(container, "thread_ts") or _str(message, "thread_ts")
        threaded = thread_ts is not None and thread_ts != message_ts
        raw = {k: v for k, v in payload.items() if k != "token"}
        events: list[MessageInbound] = []
        ignored: list[str] = []
        for action in actions:
            if not isinstance(action, dict) or action.get("type") != "button":
                kind = action.get("type") if isinstance(action, dict) else None
                ignored.append(_kind(f"action_{kind}"))
                continue
            action_ts = _str(action, "action_ts")
            if action_ts is None:
                raise _bad("block action without action_ts")
            action_id = _str(action, "action_id") or ""
            events.append(
                MessageInbound(
                    event_id=derive_event_id(
                        "slack", integration.id, channel, message_ts, "action", action_id, action_ts
                    ),
                    tenant_id=integration.tenant_id,
                    integration_id=integration.id,
                    channel="slack",
                    conversation_key=f"{channel}:{thread_ts}" if threaded else channel,
                    external_id=f"{channel}:{message_ts}:{action_id}:{action_ts}"[:512],
                    delivery_id=_str(payload, "trigger_id"),
                    sender_id=user,
                    sender_name=_str(user_obj, "username") or _str(user_obj, "name"),  # type: ignore[arg-type]
                    message_type="callback",
                    callback_data=_str(action, "value"),
                    reply_to=f"{channel}:{message_ts}",
                    thread_id=thread_ts if threaded else None,
                    sent_at=slack_time(action_ts),
                    raw=raw,
                )
            )
        return AdapterResult(events=tuple(events), response="", ignored=tuple(ignored))


def register(app: web.Application, settings: Settings) -> None:
    """Mount this channel's routes."""
    adapter = SlackAdapter(timestamp_tolerance_s=settings.slack_timestamp_tolerance_s)
    app.router.add_post(ROUTE, webhook_handler(adapter))
