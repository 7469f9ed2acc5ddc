"""Offline stage of GPT4Image (PyTorch side): describe images, embed descriptions, pack MindRecord.

Never imports mindspore together with torch: `describe`/`embed` use torch, `pack`/`verify` use
mindspore's MindRecord writer/reader, each in its own process.
"""

__version__ = "0.1.0"
