"""The streaming contract every stage of the pipeline keeps (docs/design.md §7 and §8.1).

Live input and files run the same objects: the :class:`~kkoma.models.resample.Resampler`, the
:class:`~kkoma.models.cqt.IncrementalCQT`, the :class:`~kkoma.models.inference.StreamingModel` (its TensorFlow
twin, and an :class:`~kkoma.models.inference.EnsembleModel` of several), the
:class:`~kkoma.models.tracker.NoteTracker` and the :class:`~kkoma.models.pipeline.Transcriber` that chains them. Each one is a :class:`Stream`:

- ``process(*inputs)`` consumes the next stretch of the stream (any length, zero included; several aligned inputs
  for a stage that takes several, e.g. the tracker's onset / frame / velocity probabilities) and returns every
  output that is complete now. How much it holds back is the stage's declared look-ahead, never a wall-clock wait.
- ``flush()`` ends the stream: it returns what is still held (the input's end padded as the stage defines) so that
  the outputs of all ``process`` calls and ``flush`` together are those of the whole stream at once.
- ``reset()`` forgets the stream: configuration stays, state (samples, frames, recurrent state, open notes) goes, and
  the next input is the start of a new stream. After ``flush`` a stage is reused only through ``reset``.

So for any chunking of an input, ``process`` over the chunks followed by ``flush`` equals ``process`` over the whole
input followed by ``flush``, and a stage after ``reset`` behaves as a new one: ``tests/test_streaming_contract.py``
checks both for every stage.
"""
from __future__ import annotations

from typing import ParamSpec, Protocol, TypeVar, runtime_checkable

P = ParamSpec("P")
Out = TypeVar("Out", covariant=True)


@runtime_checkable
class Stream(Protocol[P, Out]):
    """A streaming stage: ``process(*inputs) -> Out``, ``flush() -> Out``, ``reset()`` (see the module notes).

    ``Stream[[np.ndarray], np.ndarray]`` is an audio or feature stage (samples ``(n,)`` or frames ``(k, n_bins)`` in,
    the same kind out); the model is ``Stream[[np.ndarray], dict[str, np.ndarray]]``; the tracker
    ``Stream[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], list[NoteEvent]]``.
    """

    def process(self, *args: P.args, **kwargs: P.kwargs) -> Out:
        """Consume the next inputs; return the outputs complete now (possibly empty)."""
        ...

    def flush(self) -> Out:
        """End of stream: return the outputs still held back."""
        ...

    def reset(self) -> None:
        """Forget the stream; the next input starts a new one."""
        ...
