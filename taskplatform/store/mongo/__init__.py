"""The MongoDB backend (pymongo's ``AsyncMongoClient``)."""

from taskplatform.store.mongo.store import MongoTaskStore

__all__ = ["MongoTaskStore"]
