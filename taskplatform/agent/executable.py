"""``run_command``: run one command of the agent's allow-list on the worker that takes the task.

A worker serves it only when ``AGENT_COMMANDS_FILE`` names the allow-list
(``runtime.build_registry``); the registered class is ``RunCommand.bound(templates)``.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints

from taskplatform.agent.command import CommandOutcome, CommandSpec, Ending, TailBuffer, run_command
from taskplatform.agent.placeholders import MAX_VALUE_LENGTH
from taskplatform.agent.templates import (
    PLACEHOLDER_NAME_PATTERN,
    TEMPLATE_NAME_PATTERN,
    CommandTemplate,
    CommandTemplates,
    TemplateArgsError,
)
from taskplatform.auth.principal import Role
from taskplatform.errors import Cancelled, PermanentFailure, Retry
from taskplatform.tasks.executable import BackgroundTaskExecutable, Progress, TaskContext

#: Kill grace of templates that set none, when the agent's setting does not say.
DEFAULT_KILL_GRACE_SECONDS = 5.0
#: Seconds between two progress reports of a command's output (when there is new output).
PROGRESS_EVERY_SECONDS = 1.0
#: What a progress report shows of each stream: its last lines, bounded.
PROGRESS_TAIL_LINES = 20
PROGRESS_TAIL_CHARS = 2000
#: What a failure's message shows of the command's output.
ERROR_TAIL_CHARS = 1000
#: Slack added to the longest template's time-out and grace for the attempt's own time-out, so the
#: command's time-out, which kills its group and fails the task for good, always comes first.
ATTEMPT_TIMEOUT_SLACK_SECONDS = 30.0

ArgValue = Annotated[StrictStr, StringConstraints(max_length=MAX_VALUE_LENGTH)] | StrictInt


class CommandRefused(PermanentFailure):
    """The task's template or arguments are not allowed here, or the command cannot start."""


class CommandFailed(PermanentFailure):
    """The command exited with a non-zero code, or was killed after its time-out."""


class CommandTimedOut(CommandFailed):
    """The command ran past its time-out and was killed (its attempt's history says
    ``timed-out``)."""


class CommandFailedRetryable(Retry):
    """The command exited with one of its template's ``retryable_exit_codes``."""


class RunCommandParams(BaseModel):
    """Which template to run, with which placeholder values."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(pattern=TEMPLATE_NAME_PATTERN, description="A template name of the allow-list.")
    args: dict[Annotated[str, StringConstraints(pattern=PLACEHOLDER_NAME_PATTERN)], ArgValue] = Field(
        default_factory=dict, max_length=256, description="A value per placeholder of the template."
    )


class RunCommandResult(BaseModel):
    """A command that exited with code 0: its output tails and some numbers."""

    template: str
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int = Field(description="Bytes the command wrote to stdout in all.")
    stderr_bytes: int = Field(description="Bytes the command wrote to stderr in all.")
    duration_seconds: float


class CommandProgress(Progress):
    """The running command's latest output lines."""

    stdout_tail: str = Field(default="", max_length=PROGRESS_TAIL_CHARS)
    stderr_tail: str = Field(default="", max_length=PROGRESS_TAIL_CHARS)
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    elapsed_seconds: float = 0.0


class RunCommand(BackgroundTaskExecutable[RunCommandParams, RunCommandResult]):
    """Run a command of the agent's allow-list; nothing outside it, never through a shell.

    This class has an empty allow-list (it refuses every task); ``bound`` makes the class a
    worker registers, holding the templates read from ``AGENT_COMMANDS_FILE``.
    """

    task_type = "run_command"
    #: Its own queue group: only workers that serve it consume tasks.work.agent.
    queue = "agent"
    description = "Run a command of the agent's allow-list (a named template) on the worker."
    ProgressModel = CommandProgress
    #: The attempt's own time-out (the command's comes first) is no reason to retry either: the
    #: command may have done part of its work. Retries come only from ``retryable_exit_codes``.
    non_retryable_exceptions = (TimeoutError,)
    #: Operators (and admins) submit host commands; a submitter's token is refused (403).
    submit_role = Role.OPERATOR
    #: Never started twice: a command cut short by a shutdown, or lost with its worker, fails
    #: for good (the operator replays it once they know what it did).
    at_most_once = True
    templates: ClassVar[CommandTemplates] = CommandTemplates({})
    kill_grace_seconds: ClassVar[float] = DEFAULT_KILL_GRACE_SECONDS

    @classmethod
    def bound(
        cls, templates: CommandTemplates, *, kill_grace_seconds: float = DEFAULT_KILL_GRACE_SECONDS
    ) -> type[RunCommand]:
        """A subclass serving ``templates``, whose attempt time-out outlasts the longest template."""
        longest = templates.longest_run(kill_grace_seconds)
        namespace = {
            "__module__": cls.__module__,
            "__doc__": cls.__doc__,
            "templates": templates,
            "kill_grace_seconds": kill_grace_seconds,
            "timeout": longest + ATTEMPT_TIMEOUT_SLACK_SECONDS,
        }
        return type(cls.__name__, (cls,), namespace)

    async def execute(self, ctx: TaskContext[RunCommandParams]) -> RunCommandResult:
        """Check the arguments against the template, run the command, judge its exit."""
        params = ctx.parameters
        try:
            template = self.templates.template(params.template)
            argv = template.render(params.args)
        except TemplateArgsError as exc:
            raise CommandRefused(f"template {params.template!r}: {exc}") from None
        grace = template.kill_grace_seconds
        spec = CommandSpec(
            argv=argv,
            cwd=template.cwd,
            env=template.environment(),
            timeout=template.timeout_seconds,
            max_output_bytes=template.max_output_bytes,
            kill_grace=self.kill_grace_seconds if grace is None else grace,
        )
        # The argument values may be secrets: the log names them only.
        ctx.log_info("running command", template=template.name, program=argv[0], args=sorted(params.args))

        async def report(out: TailBuffer, err: TailBuffer, elapsed: float) -> None:
            await ctx.update_progress(_progress(template.name, out, err, elapsed))

        try:
            outcome = await run_command(
                spec, cancelled=lambda: ctx.cancelled, report=report, report_every=PROGRESS_EVERY_SECONDS
            )
        except OSError as exc:  # no such program or cwd, not executable
            raise CommandRefused(f"template {template.name!r}: cannot start {argv[0]!r}: {exc}") from None
        ctx.log_info(
            "command ended",
            template=template.name,
            ending=outcome.ending.value,
            exit_code=outcome.exit_code,
            duration_seconds=outcome.duration_seconds,
        )
        return _judge(template, outcome, spec)


def _judge(template: CommandTemplate, outcome: CommandOutcome, spec: CommandSpec) -> RunCommandResult:
    """The result of a command that exited with 0, else the exception that settles the task."""
    name = template.name
    if outcome.ending is Ending.CANCELLED:
        raise Cancelled(f"command {name!r} cancelled; its process group was killed{_tails(outcome)}")
    if outcome.ending is Ending.TIMED_OUT:
        raise CommandTimedOut(
            f"command {name!r} timed out after {spec.timeout:g} s; its process group was killed (SIGTERM, "
            f"SIGKILL after {spec.kill_grace:g} s){_tails(outcome)}"
        )
    code = outcome.exit_code
    if code is None or code != 0:
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        message = f"command {name!r} {how}{_tails(outcome)}"
        if code is not None and code in template.retryable_exit_codes:
            raise CommandFailedRetryable(message)
        raise CommandFailed(message)
    return RunCommandResult(
        template=name,
        exit_code=code,
        stdout=outcome.stdout.text(),
        stderr=outcome.stderr.text(),
        stdout_truncated=outcome.stdout.truncated,
        stderr_truncated=outcome.stderr.truncated,
        stdout_bytes=outcome.stdout.total,
        stderr_bytes=outcome.stderr.total,
        duration_seconds=outcome.duration_seconds,
    )


def _tails(outcome: CommandOutcome) -> str:
    """The end of stderr (else of stdout) for a failure's message, or nothing."""
    for label, buffer in (("stderr", outcome.stderr), ("stdout", outcome.stdout)):
        text = buffer.text(ERROR_TAIL_CHARS).strip()
        if text:
            return f"; {label} ends: {text[-ERROR_TAIL_CHARS:]}"
    return ""


def _progress(name: str, out: TailBuffer, err: TailBuffer, elapsed: float) -> CommandProgress:
    return CommandProgress(
        message=f"{name}: running for {elapsed:.0f} s",
        stdout_tail=_last_lines(out),
        stderr_tail=_last_lines(err),
        stdout_bytes=out.total,
        stderr_bytes=err.total,
        elapsed_seconds=round(elapsed, 3),
    )


def _last_lines(buffer: TailBuffer) -> str:
    lines = buffer.text(4 * PROGRESS_TAIL_CHARS).splitlines()[-PROGRESS_TAIL_LINES:]
    return "\n".join(lines)[-PROGRESS_TAIL_CHARS:]
