"""Which model does a request mean? One resolution of model names, for every source.

The engine's public clients lowercase a model name before a commit crosses
the wire (``model.toLowerCase()``), so a source that declares ``workItems``
receives ``workitems``. The engine's reference adapters therefore answer to
four names per model: its declared name, that name in lowercase, its
typename (the name rows carry on the client, ``WorkItem``) and the
typename in lowercase. :class:`ModelNames` resolves the same aliases to the
declared name, which is the one ``authorize``, ``scopes``, the handler,
logs, metrics and the SQL adapter's outbox see. A set of models in which two
share an alias is refused when it is declared: a request naming that alias
could mean either.

The dispatcher resolves every request of a source that declares its models
(``DataSource.model_names``, or ``DataSource.served_models()`` when they are
known only at run time); a source that declares none gets names as sent.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import TypeAlias

from ..errors import ConfigError, SourceError
from ..wire.bodies import CommitRequest, ListRequest, LoadRequest, SourceRequest

__all__ = ["DeclaredModels", "ModelNames", "aliases_of", "resolve_models"]

#: How a source declares its models: the names requests use, or each name
#: with its typename (``None`` when it has none).
DeclaredModels: TypeAlias = Collection[str] | Mapping[str, str | None]


def aliases_of(name: str, typename: str | None = None) -> tuple[str, ...]:
    """The names a model answers to, in the order the reference adapters list them."""
    found: list[str] = []
    for alias in (name, name.lower(), typename, typename.lower() if typename else None):
        if alias and alias not in found:
            found.append(alias)
    return tuple(found)


class ModelNames:
    """The models a source serves, and the names a request may use for each.

    ``ModelNames({"workItems": "WorkItem", "task": None})`` answers ``workItems``
    to ``workItems``, ``workitems``, ``WorkItem``; ``task`` to ``task``.
    Raises :class:`ConfigError` when two models share an alias, naming both.
    """

    __slots__ = ("_by_alias", "_canonical")

    def __init__(self, models: DeclaredModels, *, origin: str = "the served models") -> None:
        typenames: Mapping[str, str | None]
        if isinstance(models, Mapping):
            typenames = models
        elif isinstance(models, str):
            raise ConfigError(f"{origin}: expected a collection of model names, not one string")
        else:
            typenames = dict.fromkeys(models)
        by_alias: dict[str, str] = {}
        for name, typename in typenames.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{origin}: model names must be non-empty strings")
            if typename is not None and (not isinstance(typename, str) or not typename):
                raise ConfigError(f"{origin}: model {name!r}: a typename is a non-empty string")
            for alias in aliases_of(name, typename):
                other = by_alias.setdefault(alias, name)
                if other != name:
                    raise ConfigError(
                        f"{origin}: models {other!r} and {name!r} both answer to {alias!r} "
                        "(a model answers to its name, its typename and both in lowercase, "
                        "as the engine's clients send them); rename one of them"
                    )
        self._canonical = tuple(typenames)
        self._by_alias = by_alias

    @classmethod
    def of(
        cls, models: DeclaredModels | ModelNames, *, origin: str = "the served models"
    ) -> ModelNames:
        return models if isinstance(models, ModelNames) else cls(models, origin=origin)

    def resolve(self, name: str) -> str | None:
        """The declared name ``name`` means, or None if it means none."""
        return self._by_alias.get(name)

    def unknown(self, name: str) -> SourceError:
        """The 400 ``source_unknown_model`` for ``name``, with a hint when the case is off."""
        folded = name.casefold()
        close = [alias for alias in self._by_alias if alias.casefold() == folded]
        hint = (
            f" (did you mean {self._by_alias[close[0]]!r}? names match as declared or in lowercase)"
            if close
            else ""
        )
        return SourceError(
            "source_unknown_model", f"this source serves no model {name!r}{hint}", model=name
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._canonical)

    def __len__(self) -> int:
        return len(self._canonical)

    def __contains__(self, name: object) -> bool:
        return name in self._by_alias

    def __repr__(self) -> str:
        return f"ModelNames({list(self._canonical)})"


def resolve_models(names: ModelNames, request: SourceRequest) -> SourceRequest:
    """``request`` with every model name it holds resolved to the declared one.

    Raises ``SourceError("source_unknown_model")`` for a name no model answers
    to. A request that already uses declared names is returned as it is.
    """
    if isinstance(request, LoadRequest | ListRequest):
        model = _declared(names, request.model)
        return request if model == request.model else request.model_copy(update={"model": model})
    if isinstance(request, CommitRequest):
        operations = [
            op
            if (model := _declared(names, op.model)) == op.model
            else op.model_copy(update={"model": model})
            for op in request.operations
        ]
        hint = None if request.model is None else _declared(names, request.model)
        if hint == request.model and all(
            new is old for new, old in zip(operations, request.operations, strict=True)
        ):
            return request
        return request.with_operations(operations, hint)
    return request


def _declared(names: ModelNames, name: str) -> str:
    declared = names.resolve(name)
    if declared is None:
        raise names.unknown(name)
    return declared
