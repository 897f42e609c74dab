import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from selal_jax.core import cpu_layers, models, xla_options
from selal_jax.core.models import UNet, count_params, init_variables
from tests.helpers import all_eqns


def expected_params(in_ch, base, depth):
    """Parameter count of the published U-Net, from its layer list (PyTorch counting)."""

    def block(cin, cout):  # two bias-free 3x3 convs, each with BatchNorm (scale + bias)
        return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout

    widths = [base * 2**i for i in range(depth)]
    total, cin = 0, in_ch
    for w in widths:
        total += block(cin, w)
        cin = w
    total += block(cin, base * 2**depth)
    cin = base * 2**depth
    for w in reversed(widths):
        total += 4 * cin * w + w  # 2x2 transposed conv with bias
        total += block(2 * w, w)
        cin = w
    return total + base + 1  # 1x1 head with bias


def test_published_unet_has_7762465_parameters():
    model = UNet(base_width=32, depth=4)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64)), train=False)
    )
    assert count_params(shapes["params"]) == 7_762_465
    assert expected_params(1, 32, 4) == 7_762_465


@pytest.mark.parametrize("channels,logits", [(1, 1), (4, 1), (1, 4), (4, 4)])
def test_published_unet_parameters_with_channels_and_classes(channels, logits):
    # 7,762,465 + 288 (K - 1) + 33 (L - 1): the first 3x3 conv has 9 x 32 weights per input
    # channel, the 1x1 head 32 weights and a bias per logit.
    model = UNet(base_width=32, depth=4, num_logits=logits, head_bias_prior=0.01)
    shape = (1, 64, 64) if channels == 1 else (1, 64, 64, channels)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    assert count_params(shapes["params"]) == 7_762_465 + 288 * (channels - 1) + 33 * (logits - 1)
    layers = expected_params(channels, 32, 4) + (logits - 1) * 33
    assert count_params(shapes["params"]) == layers


def test_multiclass_head_starts_at_the_prior():
    model = UNet(base_width=4, depth=2, num_logits=4, head_bias_prior=0.01)
    variables = init_variables(model, jax.random.key(0), 32, 32, channels=2)
    logits = model.apply(variables, jnp.zeros((2, 32, 32, 2)), False)
    assert logits.shape == (2, 32, 32, 4)
    bias = np.asarray(variables["params"]["head"]["bias"])
    np.testing.assert_allclose(np.exp(bias), [0.97, 0.01, 0.01, 0.01], rtol=1e-6)


@pytest.mark.parametrize("base,depth", [(4, 2), (8, 3)])
def test_small_unet_parameter_count_matches_layer_formula(base, depth):
    model = UNet(base_width=base, depth=depth)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32)), train=False)
    )
    assert count_params(shapes["params"]) == expected_params(1, base, depth)


class Jitted:
    """model.apply, jitted (eager Flax dispatches and compiles op by op: slow on CPU)."""

    def __init__(self, model):
        self.model = model
        self._apply = jax.jit(model.apply, static_argnames=("train", "mc", "method"))

    def apply(self, *args, **kwargs):
        return self._apply(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    model = UNet(base_width=4, depth=2, dropout_rate=0.5)
    variables = init_variables(model, jax.random.key(0), 32, 32)
    images = np.random.default_rng(1).standard_normal((4, 32, 32)).astype(np.float32)
    return Jitted(model), variables, images


def test_eval_is_deterministic_and_independent_of_batch(tiny):
    model, variables, images = tiny
    full = model.apply(variables, images)
    again = model.apply(variables, images)
    single = model.apply(variables, images[1:2])
    np.testing.assert_array_equal(full, again)
    # BatchNorm uses running statistics outside training: a slice's output ignores its batch.
    np.testing.assert_allclose(full[1], single[0], rtol=1e-5, atol=1e-5)


def test_mc_passes_are_stochastic_but_keyed(tiny):
    model, variables, images = tiny
    a = model.apply(variables, images, mc=True, rngs={"dropout": jax.random.key(3)})
    b = model.apply(variables, images, mc=True, rngs={"dropout": jax.random.key(3)})
    c = model.apply(variables, images, mc=True, rngs={"dropout": jax.random.key(4)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # MC passes keep running BatchNorm statistics: no 'batch_stats' update is requested or needed.
    det = model.apply(variables, images)
    assert not np.allclose(a, det)


def test_encoder_is_deterministic_and_decode_composes(tiny):
    model, variables, images = tiny
    bottleneck, skips = model.apply(variables, images, method=UNet.encode)
    logits = model.apply(variables, bottleneck, skips, method=UNet.decode)
    np.testing.assert_allclose(logits, model.apply(variables, images), rtol=1e-6, atol=1e-6)
    assert bottleneck.shape == (4, 8, 8, 16)
    assert [s.shape[-1] for s in skips] == [4, 8]


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = UNet(base_width=4, depth=2, dtype=jnp.bfloat16)
    variables = init_variables(model, jax.random.key(0), 32, 32)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables["params"]))
    out = model.apply(variables, jnp.ones((2, 32, 32)))
    assert out.dtype == jnp.float32 and out.shape == (2, 32, 32)


def _loss_grads(model, variables, images, labels):
    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))

    return jax.jit(jax.value_and_grad(loss))(variables["params"])


def test_custom_and_xla_conv_impls_agree():
    """Same parameter tree and initial values; inference outputs, training losses and gradients
    equal to float32 rounding (the transposed convolutions as matmuls, the custom BatchNorm)."""
    xla, custom = UNet(base_width=4, depth=2, conv_impl="xla"), UNet(4, 2, conv_impl="custom")
    vx, vc = (init_variables(m, jax.random.key(0), 32, 32) for m in (xla, custom))
    assert jax.tree_util.tree_structure(vx) == jax.tree_util.tree_structure(vc)
    for a, b in zip(jax.tree_util.tree_leaves(vx), jax.tree_util.tree_leaves(vc), strict=True):
        np.testing.assert_array_equal(a, b)
    assert vx["params"]["upconv_1"]["kernel"].shape == (2, 2, 16, 8)  # bottleneck -> level 1
    gen = np.random.default_rng(1)
    images = gen.standard_normal((4, 32, 32)).astype(np.float32)
    labels = (gen.random((4, 32, 32)) < 0.2).astype(np.float32)
    outs = [jax.jit(lambda v, m=m: m.apply(v, images, False))(vx) for m in (xla, custom)]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    (loss_x, grads_x), (loss_c, grads_c) = (
        _loss_grads(m, vx, images, labels) for m in (xla, custom)
    )
    np.testing.assert_allclose(loss_c, loss_x, rtol=1e-6)
    leaves = jax.tree_util.tree_leaves
    for gx, gc in zip(leaves(grads_x), leaves(grads_c), strict=True):
        np.testing.assert_allclose(gc, gx, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(gx))))


def test_upconv_2x2_matches_conv_transpose_and_its_gradients():
    gen = np.random.default_rng(0)
    x = jnp.asarray(gen.standard_normal((2, 3, 5, 4)), jnp.float32)
    kernel = jnp.asarray(gen.standard_normal((2, 2, 4, 3)), jnp.float32)
    layer = nn.ConvTranspose(3, (2, 2), strides=(2, 2), use_bias=False)
    expected = layer.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_allclose(cpu_layers.upconv_2x2(x, kernel), expected, rtol=1e-6, atol=1e-6)
    # y[2i + a, 2j + b] = x[i, j] @ kernel[1 - a, 1 - b], by hand for one block
    np.testing.assert_allclose(expected[0, 2, 7], x[0, 1, 3] @ kernel[1, 0], rtol=1e-6)
    cot = jnp.asarray(gen.standard_normal(expected.shape), jnp.float32)
    _, vjp_xla = jax.vjp(cpu_layers._conv_transpose_2x2, x, kernel)
    _, vjp_custom = jax.vjp(cpu_layers.upconv_2x2, x, kernel)
    for a, b in zip(vjp_xla(cot), vjp_custom(cot), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_max_pool_2x2_gradient_goes_to_the_first_maximum():
    gen = np.random.default_rng(0)
    x = jnp.asarray(np.round(gen.standard_normal((2, 4, 6, 3)) * 2) / 2, jnp.float32)  # ties
    x = x.at[0, :2, :2, 0].set(1.0)  # a window of four equal maxima
    weights = jnp.asarray(gen.standard_normal((2, 2, 3, 3)), jnp.float32)
    grads = [
        jax.grad(lambda z, f=f: jnp.sum(jnp.sin(f(z)) * weights))(x)
        for f in (cpu_layers.xla_max_pool_2x2, cpu_layers.max_pool_2x2)
    ]
    np.testing.assert_array_equal(cpu_layers.max_pool_2x2(x), cpu_layers.xla_max_pool_2x2(x))
    np.testing.assert_array_equal(grads[1], grads[0])
    assert grads[1][0, 0, 0, 0] != 0 and not np.any(grads[1][0, :2, :2, 0].ravel()[1:])


def test_conv_impl_auto_and_validation():
    assert models.resolve_conv_impl("auto") == (
        "custom" if jax.default_backend() == "cpu" else "xla"
    )
    assert models.resolve_conv_impl("xla") == "xla"
    with pytest.raises(ValueError, match="model.conv_impl"):
        models.resolve_conv_impl("fast")


def test_cpu_programs_compile_without_ynnpack():
    assert xla_options.compiler_options("gpu") is None
    assert xla_options.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    jitted = xla_options.backend_jit(lambda x, n: x * n, static_argnames=("n",))
    assert jitted.__wrapped__ is not None
    np.testing.assert_array_equal(jitted(jnp.arange(3.0), n=2), [0.0, 2.0, 4.0])
    assert jitted.lower(jnp.arange(3.0), n=2).compile() is not None


def test_conv3x3_in_parts_is_the_convolution_of_the_concatenation():
    gen = np.random.default_rng(0)
    skip = jnp.asarray(gen.standard_normal((2, 8, 6, 3)), jnp.float32)
    up = jnp.asarray(gen.standard_normal((2, 8, 6, 5)), jnp.float32)
    layer = cpu_layers.Conv3x3(4, (3, 3), padding="SAME", use_bias=False)
    variables = layer.init(jax.random.key(0), jnp.concatenate([skip, up], -1))
    reference = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)
    assert jax.tree_util.tree_map(jnp.shape, variables) == jax.tree_util.tree_map(
        jnp.shape, reference.init(jax.random.key(0), jnp.concatenate([skip, up], -1))
    )
    whole = reference.apply(variables, jnp.concatenate([skip, up], -1))
    np.testing.assert_allclose(layer.apply(variables, (skip, up)), whole, rtol=1e-5, atol=1e-5)
    # One output pixel by hand: the 3x3 neighbourhood (zero-padded) times the kernel.
    kernel = np.asarray(variables["params"]["kernel"])
    both = np.pad(np.concatenate([skip, up], -1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    by_hand = np.einsum("abc,abco->o", both[1, 3:6, 0:3], kernel)
    np.testing.assert_allclose(layer.apply(variables, (skip, up))[1, 3, 0], by_hand, rtol=1e-5)
    with pytest.raises(ValueError, match="without bias"):
        cpu_layers.Conv3x3(4, (3, 3), padding="SAME").init(jax.random.key(0), (skip, up))


def test_custom_mc_passes_match_xla_s():
    """The custom path's Monte-Carlo passes (skip convolved apart, the unrolled-threefry
    dropout) give XLA's path's logits: the same masks, convolutions equal to rounding."""
    from selal_jax.core import rng, scoring

    xla, custom = UNet(base_width=4, depth=2, conv_impl="xla"), UNet(4, 2, conv_impl="custom")
    variables = init_variables(xla, jax.random.key(0), 32, 32)
    images = np.random.default_rng(3).standard_normal((3, 32, 32)).astype(np.float32)
    key = jax.random.key(9)
    with rng.classic_threefry():
        logits = [
            jax.jit(lambda v, m=m: scoring.mc_logits(m, v, images, jnp.arange(3), key, 4))(
                variables
            )
            for m in (xla, custom)
        ]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[0][:, 0], logits[0][:, 1])  # the passes differ


@pytest.mark.parametrize("channels", [1, 3])
def test_conv3x3_taps_is_the_convolution(channels):
    """The scoring program's first layer: nine shifted products equal the 3x3 'SAME'
    convolution, against float64 by hand and XLA's convolution, to float32 rounding."""
    gen = np.random.default_rng(channels)
    x = gen.standard_normal((2, 6, 5, channels)).astype(np.float32)
    kernel = gen.standard_normal((3, 3, channels, 4)).astype(np.float32)
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    by_hand = np.zeros((2, 6, 5, 4))
    for i in range(6):
        for j in range(5):
            by_hand[:, i, j] = np.einsum("nabc,abco->no", padded[:, i : i + 3, j : j + 3], kernel)
    taps = cpu_layers.conv3x3_taps(jnp.asarray(x), jnp.asarray(kernel))
    np.testing.assert_allclose(taps, by_hand, rtol=1e-5, atol=1e-5)
    layer = cpu_layers.Conv3x3(4, (3, 3), padding="SAME", use_bias=False)
    variables = layer.init(jax.random.key(0), x)
    np.testing.assert_allclose(
        layer.apply(variables, x, taps=True), layer.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="at most 4 channels"):
        layer.init(jax.random.key(0), np.zeros((1, 4, 4, 5), np.float32), taps=True)


def _random_batch_stats(variables, seed):
    """Running statistics away from their initial 0 and 1 (BatchNorm then matters)."""
    gen = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            gen.uniform(0.5, 1.5, v.shape)
            if "var" in jax.tree_util.keystr(path)
            else 0.3 * gen.standard_normal(v.shape)
        ).astype(np.float32),
        variables["batch_stats"],
    )
    return {"params": variables["params"], "batch_stats": stats}


def _primitive_counts(fn, *args):
    names = [eqn.primitive.name for eqn in all_eqns(jax.make_jaxpr(fn)(*args).jaxpr)]
    return names.count("conv_general_dilated"), names.count("concatenate")


@pytest.mark.parametrize("channels", [1, 3])
def test_scoring_forward_pass_equals_the_evaluation_pass(channels):
    """`scoring=True` on the custom path: the skips convolved apart (no concatenation) and the
    first convolution as taps; logits equal to the evaluation pass's to float32 rounding. On
    the XLA path, in training and in evaluation the program is unchanged."""
    custom, xla = UNet(4, 2, conv_impl="custom"), UNet(4, 2, conv_impl="xla")
    variables = _random_batch_stats(init_variables(custom, jax.random.key(0), 32, 32, channels), 5)
    shape = (4, 32, 32) if channels == 1 else (4, 32, 32, channels)
    images = np.random.default_rng(6).standard_normal(shape).astype(np.float32)

    def apply(model, **kw):
        return lambda v: model.apply(v, images, False, **kw)

    scored = jax.jit(apply(custom, scoring=True))(variables)
    evaluated = jax.jit(apply(custom))(variables)
    np.testing.assert_allclose(scored, evaluated, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored, jax.jit(apply(xla))(variables), rtol=1e-5, atol=1e-5)
    # 10 3x3 convolutions + the 1x1 head; scoring: one fewer (taps), one more per decoder block.
    assert _primitive_counts(apply(custom), variables) == (11, 2)
    assert _primitive_counts(apply(custom, scoring=True), variables) == (12, 0)
    xla_counts = _primitive_counts(apply(xla), variables)  # + the transposed convolutions
    assert _primitive_counts(apply(xla, scoring=True), variables) == xla_counts

    def train(**kw):
        key = jax.random.key(1)
        return lambda v: custom.apply(
            v, images, True, mutable=["batch_stats"], rngs={"dropout": key}, **kw
        )

    assert _primitive_counts(train(scoring=True), variables) == _primitive_counts(
        train(), variables
    )
