"""The one exception type for problems a user can fix (bad file, bad setting, missing device...).

The CLI prints its message as one sentence and exits non-zero; anything else is a bug and keeps its traceback.
"""


class KkomaError(Exception):
    """A user-facing error; ``str(e)`` is one clear sentence."""

    exit_code = 1


class KkomaWarning(UserWarning):
    """Something a user should know that did not stop the job (e.g. a file transcribed only as far as it decodes);
    ``str(w)`` is one sentence."""


def require(module: str, feature: str, extra: str = "train"):
    """Import an optional dependency, or raise KkomaError saying which extra installs it.

    ``require("mir_eval", "kkoma evaluate")`` returns the module; when it is missing the message is one sentence,
    e.g. "kkoma evaluate needs mir_eval, which is not installed: pip install 'kkoma[train]'."
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise  # the module is there but something it imports is missing: a broken install, keep the traceback
        raise KkomaError(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                         f"pip install 'kkoma[{extra}]'.") from None
