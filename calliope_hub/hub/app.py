"""CalliopeHub: JupyterHub that checks Calliope Hub's config before it starts, and restarts warm.

Run `calliope-jupyterhub -f jupyterhub_config.py` (or `python -m calliope_hub.hub.app`)
instead of `jupyterhub`. Plain `jupyterhub` still runs the spawner; it only checks the
config later (see calliope_hub.hub.runtime).

Why our own app. JupyterHub 6.1.1 gives a spawner package no hook at hub start: the
spawner's config is first read when JupyterHub constructs a spawner, which a hub with no
running servers does only at the first spawn. So a bad region, catalog or trait value
would let the hub start and fail a user later. This app constructs one spawner of the
configured class from the config right after the config file loads, before JupyterHub
touches its database, and that spawner builds the HubRuntime exactly as every later one
finds it. A bad value stops the start with one line naming the setting and exit status 1.

Why it also primes. JupyterHub's `init_spawners` polls every running server at once; each
poll of a restored task would wait for the watcher's first sweep. The app starts the runtime
and describes every task the database records as running (`HubRuntime.prime`, ⌈N/100⌉
DescribeTasks) before `init_spawners`, so those polls are dictionary reads; the same one query
for the running users also holds them so that JupyterHub's loop over them stops costing
statements per server (`running_users`). With a spawner that is not ours it changes
nothing: that is JupyterHub's own start, which the bench's floor measures. The HA app
(calliope_hub.hub.ha) builds on this one.
"""

from __future__ import annotations

import sys
from typing import Any

from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.user import UserDict
from sqlalchemy.orm import Session, selectinload
from traitlets import TraitError, default

from calliope_hub.hub import activity
from calliope_hub.hub.counts import CountedUserDict
from calliope_hub.hub.runtime import SETTINGS_KEY, HubRuntime
from calliope_hub.spawner import ECSSpawner

#: the exit status of a hub whose config cannot run
BAD_CONFIG_EXIT = 1


def running_users(db: Session) -> list[orm.User]:
    """Every user with a running server and their spawners, in one query, to hold through JupyterHub's check.

    JupyterHub's `init_spawners` selects the running spawners with `selectinload` of their
    users, but the session's identity map holds objects weakly and its loop finds them gone:
    each `orm_spawner.user` lazy-loads the user and its spawners again, 5 statements per
    server (5,012 at 1,000 servers; 11 with these held), most of its restart time on
    PostgreSQL. While the caller holds the list, those reads are identity-map hits.
    """
    users: list[orm.User] = (
        db.query(orm.User)
        .join(orm.Spawner, orm.Spawner.user_id == orm.User.id)
        .filter(orm.Spawner.server_id.isnot(None))
        .options(selectinload(orm.User._orm_spawners))
        .all()
    )
    return users


def recorded_tasks(users: list[orm.User], cluster: str) -> set[str]:
    """The task of every running server of `users` in `cluster`, as the spawners' state records it."""
    return {
        state["task_arn"]
        for user in users
        for orm_spawner in user._orm_spawners
        if orm_spawner.server_id is not None
        and (state := orm_spawner.state or {}).get("task_arn")
        and state.get("cluster", cluster) == cluster
    }


class _SettingsHolder:
    """The `user` of the spawner the app builds from config: all HubRuntime.of reads of a user."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings


class CalliopeHub(JupyterHub):
    """JupyterHub whose start builds, checks and primes Calliope Hub's runtime."""

    #: built by preflight() when the spawner is an ECSSpawner; None for any other spawner
    runtime: HubRuntime | None = None
    #: JupyterHub's route table (its `handlers` trait, set by init_handlers), typed for mypy
    handlers: list[tuple[Any, ...]]

    async def initialize(self, *args: Any, **kwargs: Any) -> None:
        argv = args[0] if args else kwargs.get("argv")
        self.parse_command_line(argv)
        if not (self.generate_config or self.generate_certs or self.subapp):
            # JupyterHub loads the file again in its initialize(); loading is idempotent.
            self.load_config_file(self.config_file)
            await self.preflight()
        await super().initialize(*args, **kwargs)

    async def preflight(self) -> None:
        """What runs after the config loads and before JupyterHub's own start: the runtime, checked."""
        self.runtime = self._build_runtime()

    def refuse(self, why: str, status: int = BAD_CONFIG_EXIT) -> None:
        """One line, no traceback, a non-zero exit: JupyterHub's launcher logs any exception with one."""
        self.log.critical("Calliope Hub: refusing to start: %s", "; ".join(str(why).splitlines()))
        self.exit(status)

    def _build_runtime(self) -> HubRuntime | None:
        spawner_class = self.spawner_class
        if not (isinstance(spawner_class, type) and issubclass(spawner_class, ECSSpawner)):
            return None
        try:
            # The spawner reads c.ECSSpawner.* (traitlets checks each value) and builds the runtime.
            spawner_class(config=self.config, log=self.log, user=_SettingsHolder(self.tornado_settings))
        except (ValueError, TraitError) as e:  # CatalogConfigError is a ValueError
            self.refuse(str(e))
        runtime: HubRuntime = self.tornado_settings[SETTINGS_KEY]
        return runtime

    def init_tornado_settings(self) -> None:
        super().init_tornado_settings()  # a new dict: the runtime follows it there
        if self.runtime is not None:
            self.runtime.settle(self.tornado_settings)

    async def init_spawners(self) -> int:
        """JupyterHub's check of every running server, its first polls answered from a primed cache."""
        if self.runtime is None:  # not our spawner: JupyterHub's own start, unchanged (the bench's floor)
            stock: int = await super().init_spawners()
            return stock
        await self.runtime.start()
        held = running_users(self.db)
        primed = await self.runtime.prime(recorded_tasks(held, self.runtime.cluster))
        self.log.info("Calliope Hub: primed the status of %d running tasks (%d users)", len(primed), len(held))
        checked: int = await super().init_spawners()
        del held
        self.runtime.hand_over(self._claimed_tasks())
        return checked

    @default("users")
    def _users_default(self) -> UserDict:
        """JupyterHub's users, counted for its spawn limits at most once a second (hub/counts.py)."""
        if self.runtime is None:  # not our spawner: JupyterHub's own
            stock: UserDict = super()._users_default()
            return stock
        return CountedUserDict(db_factory=lambda: self.db, settings=self.tornado_settings)

    def init_handlers(self) -> None:
        """JupyterHub's, with activity posts that find their user in memory (hub/activity.py)."""
        super().init_handlers()
        if self.runtime is not None:
            self.handlers = activity.with_activity_handler(self.handlers, activity.UsersByName())

    async def update_last_activity(self) -> None:
        """JupyterHub's activity poll from the users it holds, not a query per route (hub/activity.py)."""
        if self.runtime is None:  # not our spawner: JupyterHub's own, as everywhere in this app
            await super().update_last_activity()
            return
        await activity.update_last_activity(self)

    def _claimed_tasks(self) -> set[str]:
        """The task of every ECS spawner JupyterHub holds after its check."""
        return {
            spawner.task_arn
            for user in self.users.values()
            for spawner in user.spawners.values()
            if isinstance(spawner, ECSSpawner) and spawner.task_arn
        }


main = CalliopeHub.launch_instance

if __name__ == "__main__":
    # As jupyterhub does: `python -m` would make a second CalliopeHub class in __main__.
    from calliope_hub.hub import app

    sys.exit(app.main())
