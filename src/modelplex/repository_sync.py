"""One repository state for every process that serves models.

A load or unload call reaches one process (an API replica); the others (more
replicas, embedded and separate workers) hold their own registries. The call's
process counts a new generation of the model in the job store
(`RepositoryStore`), and every process polls the generations (one small read,
every `repository_poll_s`) and does the same load or unload when one moved.
A job worker also catches up at once when a job names a version it does not
hold, so a job pinned to a version that another process loaded runs it.

A process starting takes the generations as they are as its baseline and reads
the repository folder as it is: what earlier calls loaded is on disk already;
what they unloaded, its first poll unloads.
"""

from __future__ import annotations

import asyncio
import logging

from modelplex.core.registry import ModelRegistry
from modelplex.core.served import ModelEntry
from modelplex.errors import ModelplexError, ResourceExhausted
from modelplex.storage.interface import RepositoryAction, RepositoryStore

log = logging.getLogger(__name__)


class RepositorySync:
    def __init__(self, registry: ModelRegistry, store: RepositoryStore, poll_s: float) -> None:
        self.registry = registry
        self._store = store
        self._poll_s = poll_s
        self._seen: dict[str, int] = {}
        self._catching_up = asyncio.Lock()
        self._pass: asyncio.Future[bool] | None = None
        self._unpublished: dict[str, RepositoryAction] = {}

    async def baseline(self) -> None:
        """Take the current generations as already followed (call before the first
        load of the repository). A store that cannot answer leaves no baseline: the
        first poll that reaches it reloads whatever was ever changed, which is safe."""
        try:
            generations = await self._store.repository_generations()
        except ModelplexError as exc:
            log.warning("repository generations not read at start: %s", exc.message)
            return
        # An unload is not on disk: left unseen, the first poll does it here too, so
        # a process that (re)starts does not serve what the others have unloaded.
        self._seen = {
            name: g.generation
            for name, g in generations.items()
            if g.action is not RepositoryAction.UNLOAD
        }

    async def load(self, model: str) -> ModelEntry:
        """A load call: load here, then tell the other processes (even a failed load:
        they read the same folder, so they find the same outcome)."""
        entry = await self.registry.reload(model)
        await self._publish(model, RepositoryAction.LOAD)
        return entry

    async def unload(self, model: str) -> None:
        await self.registry.unload(model)
        await self._publish(model, RepositoryAction.UNLOAD)

    async def _publish(self, model: str, action: RepositoryAction) -> None:
        """Count the change for the other processes. With the store down the call
        still answers what it did here, and each poll tries the count again (the
        latest action per model), so the others follow once the store is back."""
        # Under the poll's lock: a poll between the count and `_seen` would load the
        # model a second time here.
        async with self._catching_up:
            self._unpublished[model] = action
            await self._publish_pending(warn=True)

    async def _publish_pending(self, *, warn: bool = False) -> None:
        """`warn`: log a failure (a poll's are left to `run`'s once-per-outage line)."""
        for model, action in list(self._unpublished.items()):
            try:
                generation = await self._store.record_repository_change(model, action)
            except ModelplexError as exc:
                if warn:
                    log.warning("model %s: the %s is not counted yet (retried at each poll): "
                                "%s", model, action.value, exc.message)  # fmt: skip
                return
            if self._unpublished.get(model) is action:
                del self._unpublished[model]
            self._seen[model] = max(generation, self._seen.get(model, 0))

    async def catch_up(self) -> bool:
        """Do every change other processes made since the last look; whether any."""
        async with self._catching_up:
            await self._publish_pending()
            generations = await self._store.repository_generations()
            changed = [g for g in generations.values() if g.generation > self._seen.get(g.model, 0)]
            for change in changed:
                log.info(
                    "model %s: following a repository %s (generation %d)",
                    change.model, change.action.value, change.generation,
                )  # fmt: skip
                try:
                    await self.registry.follow(
                        change.model, unloaded=change.action is RepositoryAction.UNLOAD
                    )
                except ResourceExhausted:  # every load thread busy: the next poll tries again
                    continue
                except ModelplexError as exc:  # e.g. the folder was removed since
                    log.warning("model %s: not followed: %s", change.model, exc.message)
                self._seen[change.model] = change.generation
            return bool(changed)

    async def run(self) -> None:
        """Poll until cancelled (start it once the repository's first load is done;
        end it with `stop`)."""
        failing = False
        while True:
            await asyncio.sleep(self._poll_s)
            self._pass = asyncio.ensure_future(self.catch_up())
            try:
                # Shielded: a load on a thread cannot be cancelled, and the registry
                # must not be closed under it (`stop` waits for it).
                await asyncio.shield(self._pass)
                failing = False
            except ModelplexError as exc:  # the store is down: try again next time
                if not failing:  # once per outage, not every second of it
                    log.warning("repository generations not read: %s", exc.message)
                failing = True
            except Exception as exc:  # a bug: keep following
                log.error("following the repository failed", exc_info=exc)

    async def stop(self, running: asyncio.Task[None]) -> None:
        """End `running` (the task of `run`), and wait for a poll it left loading."""
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        if self._pass is not None:
            await asyncio.gather(self._pass, return_exceptions=True)
