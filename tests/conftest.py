import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run tiny networks: one torch thread is faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
