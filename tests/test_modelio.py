import numpy as np
import tiny

from ocr_bundles_runtime.session import quiet_cpu_session
from stages import modelio


def test_exposing_reads_inner_tensors_in_the_order_asked_and_leaves_the_model_alone():
    model = tiny.tiny_ctc()
    before = model.SerializeToString()
    x = tiny.inputs(1)[0]
    probe = modelio.exposing(model, ["c_silu", "c"])
    assert model.SerializeToString() == before
    sess = quiet_cpu_session(probe.SerializeToString(), level="disable")
    assert [o.name for o in sess.get_outputs()] == ["c_silu", "c"]
    silu, conv = sess.run(None, {sess.get_inputs()[0].name: x})
    # the tensors are the graph's own: SiLU of the convolution, shaped [1, features, 1, W/2]
    assert conv.shape == (1, 8, 1, x.shape[-1] // 2)
    np.testing.assert_allclose(silu, conv / (1 + np.exp(-conv)), rtol=1e-5, atol=1e-6)
