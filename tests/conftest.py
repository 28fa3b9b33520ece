import jax
import pytest


@pytest.fixture
def x64():
  """Run a test body with float64 enabled."""
  with jax.enable_x64(True):
    yield
