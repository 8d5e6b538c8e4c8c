"""Quickstart: many concurrent callers, one Batcher, a CNN built in code (no downloads).

Run: python examples/quickstart.py
"""

import anyio
import numpy as np

from batcher import Batcher, BatcherConfig, models


async def main() -> None:
    model = models.cnn()  # an openvino.Model; a path to .xml or .onnx works too
    config = BatcherConfig(batch_sizes=(1, 2, 4, 8, 16, 32), strategy="auto")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((256, 3, 64, 64)).astype(np.float32)
    predictions: dict[int, int] = {}

    async with Batcher(model, config) as batcher:

        async def classify(i: int) -> None:
            logits = await batcher.submit(images[i])  # one sample, no batch axis
            predictions[i] = int(np.argmax(logits))

        async with anyio.create_task_group() as tg:
            for i in range(len(images)):
                tg.start_soon(classify, i)

        stats = batcher.statistics()

    print(f"classified {len(predictions)} images; first ten: {[predictions[i] for i in range(10)]}")
    print(f"inferences per compiled batch size: {dict(sorted(stats.chunks_per_size.items()))}")
    print(f"mean chunk: {stats.mean_chunk_size:.1f} rows; completed {stats.completed}")


if __name__ == "__main__":
    anyio.run(main)
