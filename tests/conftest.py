import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
# The tests' tensors are tiny: one thread avoids the cost of waking a second one for every op.
torch.set_num_threads(1)
