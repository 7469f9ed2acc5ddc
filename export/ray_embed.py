"""`embed --engine ray`: the one-process embed's chunks (embed.ChunkedEmbedding: the same PREFIX.parts/,
so either engine resumes what the other left), each encoded by a Ray worker (ray_engine.py) with the same
encode_chunk and saved by the driver as it arrives; PREFIX.npy is then assembled as in one process.

The driver builds the encoder once on its CPU, only to know its name and dimension (text encoders are
small); it reads each missing chunk's texts and sends them with the block, so workers need no access to
the descriptions file.
"""
from pathlib import Path
from typing import Dict

from tqdm import tqdm

from .descriptions import DescriptionSet
from .embed import ChunkedEmbedding, create_encoder, encode_chunk
from .ray_engine import BlockWorker, RayOptions, cluster, import_ray, run_blocks


class EmbedWorker(BlockWorker):
    def setup(self, backend: str, model: str, device: str, batch_size: int):
        self.encoder = create_encoder(backend, model, device)
        self.batch_size = batch_size

    def process(self, block: Dict):
        return encode_chunk(self.encoder, block["texts"], self.batch_size)


def run_embed_ray(descriptions_path, out_prefix, backend: str, model: str, device: str, batch_size: int,
                  chunk_size: int, opts: RayOptions) -> Dict:
    import_ray()  # without Ray: one line saying what to install, before anything is loaded or written
    descs = DescriptionSet(descriptions_path)  # a bad file is told before the encoder loads
    job = ChunkedEmbedding(descs, out_prefix, create_encoder(backend, model, "cpu"), batch_size, chunk_size)
    meta = job.finished_meta()
    if meta is not None:
        return meta
    with cluster(opts) as ray:  # joined before PREFIX.parts/ is written: a wrong address leaves none
        job.open()
        blocks = [{"key": k, "texts": job.texts(k)} for k in job.missing()]
        if blocks:
            with tqdm(total=len(job.descs), initial=job.done_count(), desc="embed", unit="text") as bar:
                def on_result(k: int, emb) -> None:
                    job.save(k, emb)
                    bar.update(len(emb))

                run_blocks(ray, blocks, EmbedWorker, dict(backend=backend, model=model, device=device,
                                                          batch_size=batch_size),
                           opts, on_result, Path(f"{out_prefix}.ray_test_actors"))
    return job.assemble()
