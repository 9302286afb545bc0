"""NVIDIA FLARE's ``ScriptRunner``, naming the site script by its copy in the job rather than by a local path."""

from __future__ import annotations

import os
from typing import Any

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.job_config.script_runner import ScriptRunner

__all__ = ["JobScriptRunner"]


class JobScriptRunner(ScriptRunner):
    """A ``ScriptRunner`` (in-process) whose job config names the script by its file name.

    NVIDIA FLARE copies the script into the app's ``custom/`` folder, but ``ScriptRunner`` writes the path it was given
    into the job config, and a party runs an absolute path as it is: a job exported on one machine would name a file
    that does not exist at a hospital. By its file name, every party runs the copy that came with the job.

    Example::

        >>> job.to(JobScriptRunner(script="/opt/pkg/bundle_client.py", script_args="--workdir w"), "hospital_1")
    """

    def add_to_fed_job(self, job: Any, ctx: Any, **kwargs: Any) -> dict:
        if self._execution_mode != ExecutionMode.IN_PROCESS:
            return super().add_to_fed_job(job, ctx, **kwargs)
        job.check_kwargs(args_to_check=kwargs, args_expected={"tasks": False})
        executor = ClientAPIExecutor(
            task_script_path=os.path.basename(self._script), task_script_args=self._script_args,
            execution_mode=self._execution_mode, params_exchange_format=self._params_exchange_format,
            server_expected_format=self._server_expected_format, params_transfer_type=self._params_transfer_type,
            memory_gc_rounds=self._memory_gc_rounds, cuda_empty_cache=self._cuda_empty_cache,
        )
        job.add_executor(executor, tasks=kwargs.get("tasks", ["*"]), ctx=ctx)
        job.add_resources(resources=[self._script], ctx=ctx)
        return {}
