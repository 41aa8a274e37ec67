"""Suite-wide settings."""

import torch

# The tests use tiny models, for which thread start-up costs more than it saves; one
# thread also keeps CPU results identical from run to run.
torch.set_num_threads(1)
