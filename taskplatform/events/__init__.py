"""Lifecycle events: the in-process bus, the state aggregator and the external bridge."""

from __future__ import annotations

from taskplatform.events.bus import (
    CriticalSubscriber,
    Delivery,
    EventBus,
    Observer,
    ObserverStats,
    Published,
    TaskView,
)
from taskplatform.events.external import ExternalTaskEvent, routing_key_for, to_external
from taskplatform.events.models import (
    EVENT_CLASSES,
    EventType,
    Origin,
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskEvent,
    TaskFailed,
    TaskProgress,
    TaskReplayed,
    TaskRequeued,
    TaskRetrying,
    TaskStarted,
    TaskSubmitted,
    TaskWaiting,
    new_event_id,
)

__all__ = [
    "EVENT_CLASSES",
    "CriticalSubscriber",
    "Delivery",
    "EventBus",
    "EventType",
    "ExternalTaskEvent",
    "Observer",
    "ObserverStats",
    "Origin",
    "Published",
    "TaskCancelled",
    "TaskCompleted",
    "TaskDeadLettered",
    "TaskEvent",
    "TaskFailed",
    "TaskProgress",
    "TaskReplayed",
    "TaskRequeued",
    "TaskRetrying",
    "TaskStarted",
    "TaskSubmitted",
    "TaskView",
    "TaskWaiting",
    "new_event_id",
    "routing_key_for",
    "to_external",
]
