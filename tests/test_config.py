"""Config validation: every bad config fails at start with one line naming the key."""

import os

import pytest

from asgml_jax.config_schema import ConfigError, validate
from conftest import tiny_config, train_cli_in_process


def _error(mutate) -> str:
  config = tiny_config("/tmp/unused")
  mutate(config)
  with pytest.raises(ConfigError) as err:
    validate(config)
  message = str(err.value)
  assert "\n" not in message
  return message


def test_valid_tiny_config_passes():
  validate(tiny_config("/tmp/unused"))


def test_default_config_is_valid():
  from configs.default import get_config
  validate(get_config())


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c.update({"batch_size": 0}), "config.batch_size"),
    (lambda c: c.optimizer.update({"learning_rate": -0.1}), "config.optimizer.learning_rate"),
    (lambda c: c.model.update({"fusion": "attention"}), "config.model.fusion"),
    (lambda c: c.modalities.audio.update({"encoder": "vgg"}), "config.modalities.audio.encoder"),
    (lambda c: c.modalities.audio.update({"input_shape": (12,)}),
     "config.modalities.audio.input_shape"),
    (lambda c: c.dataset.synthetic.signal.update({"depth": 0.1}),
     "config.dataset.synthetic.signal.depth"),
    (lambda c: c.update({"eval_batch_size": -1}), "config.eval_batch_size"),
    (lambda c: c.optimizer.update({"momentum": 1.0}), "config.optimizer.momentum"),
    (lambda c: c.method.update({"name": "magic"}), "config.method.name"),
    (lambda c: c.update({"batch_size": 10_000}), "config.batch_size"),
    (lambda c: c.optimizer.update({"learning_rate": float("inf")}),
     "config.optimizer.learning_rate"),
    (lambda c: c.optimizer.update({"weight_decay": float("inf")}),
     "config.optimizer.weight_decay"),
    (lambda c: c.loss.update({"unimodal_weight": float("nan")}), "config.loss.unimodal_weight"),
])
def test_impossible_values_name_the_key(mutate, key):
  assert _error(mutate).startswith(key + ":")


def test_unknown_key_is_named_with_a_suggestion():
  config = tiny_config("/tmp/unused")
  config.unlock()
  config.model.fuson = "concat"
  with pytest.raises(ConfigError, match=r"config.model.fuson: unknown key \(did you mean 'fusion'\?\)"):
    validate(config)


def test_unknown_key_inside_a_modality():
  config = tiny_config("/tmp/unused")
  config.modalities.audio.unlock()
  config.modalities.audio.encodr = "mlp"
  with pytest.raises(ConfigError, match="config.modalities.audio.encodr: unknown key"):
    validate(config)


def test_modality_without_signal_is_named():
  config = tiny_config("/tmp/unused", three_modalities=True)
  del config.dataset.synthetic.signal["text"]
  with pytest.raises(ConfigError, match="config.dataset.synthetic.signal.text: missing"):
    validate(config)


def test_command_line_rejects_bad_value_with_one_line(tmp_path, capsys):
  code, _, err = train_cli_in_process(["--config", "configs/default.py", "--workdir",
                                       str(tmp_path / "run"), "--config.batch_size=0"], capsys)
  assert code == 2
  assert err.strip().splitlines()[-1] == (
      "error: config.batch_size: must be a positive integer, got 0")
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_command_line_rejects_unknown_override(tmp_path, capsys):
  code, _, err = train_cli_in_process(["--config", "configs/default.py", "--workdir",
                                       str(tmp_path / "run"), "--config.model.fuson=sum"], capsys)
  assert code != 0
  assert "fuson" in err


def test_a_workdir_refuses_another_config_but_not_keys_added_since_at_their_default(tmp_path):
  """Resuming with a changed hyperparameter would mix two runs: refused, the key
  named. num_epochs may change. A key the saved config.json lacks (added to the
  schema after the run started) is accepted at its default, refused otherwise."""
  import json

  from asgml_jax.plan import schema_defaults
  from asgml_jax.run_dir import CONFIG_FILE, check_config_matches_workdir
  workdir = str(tmp_path / "run")
  config = tiny_config(str(tmp_path))
  check_config_matches_workdir(config, workdir, schema_defaults())
  changed = tiny_config(str(tmp_path))
  changed.optimizer.learning_rate = 0.5
  with pytest.raises(ConfigError, match="config.optimizer.learning_rate: differs"):
    check_config_matches_workdir(changed, workdir, schema_defaults())
  longer = tiny_config(str(tmp_path), num_epochs=9)
  check_config_matches_workdir(longer, workdir, schema_defaults())
  path = tmp_path / "run" / CONFIG_FILE
  saved = json.loads(path.read_text())
  del saved["dataset"]["placement"]  # as written before the key existed
  path.write_text(json.dumps(saved))
  check_config_matches_workdir(tiny_config(str(tmp_path)), workdir, schema_defaults())
  path.write_text(json.dumps(saved))
  host = tiny_config(str(tmp_path))
  host.dataset.placement = "host"
  with pytest.raises(ConfigError, match="config.dataset.placement: differs"):
    check_config_matches_workdir(host, workdir, schema_defaults())


def test_an_mmsa_pickle_given_by_absolute_path_needs_no_raw_dir(tmp_path, monkeypatch):
  """configs/mosei.py documents `MOSEI_PKL=~/data/MOSEI/unaligned_50.pkl python -m
  launch.train ...`: the pickle is the raw data, so its absolute path is enough;
  a bare file name is read from dataset.raw_dir and is refused without one."""
  from configs import mosei
  monkeypatch.setenv("MOSEI_PKL", str(tmp_path / "unaligned_50.pkl"))
  validate(mosei.get_config())
  monkeypatch.setenv("MOSEI_PKL", "unaligned_50.pkl")
  with pytest.raises(ConfigError, match=r"dataset\.mmsa\.file: 'unaligned_50\.pkl' is a relative "
                     r"name: give the pickle's absolute path, or set dataset\.raw_dir"):
    validate(mosei.get_config())
  config = mosei.get_config()
  config.dataset.raw_dir = str(tmp_path)
  validate(config)


def test_a_workdir_ignores_unused_methods_settings_and_removed_inert_keys(tmp_path):
  """A run directory written by an earlier version resumes although the
  defaults of methods it never ran have changed since (IPRM's α was 0.9) and
  a key it held at its inert value was removed (AUG's `skipped`, now
  optimizer.zero_grad); an IPRM run saved with the old α is refused, and so
  is one that had set the removed key."""
  import json

  from asgml_jax.plan import Plan, schema_defaults
  from asgml_jax.run_dir import CONFIG_FILE, check_config_matches_workdir
  workdir = str(tmp_path / "run")
  config = tiny_config(str(tmp_path))
  unread = Plan.build(config).identity.unread
  assert "method.iprm" in unread and "method.aug" in unread
  check_config_matches_workdir(config, workdir, schema_defaults(), unread)
  path = tmp_path / "run" / CONFIG_FILE
  saved = json.loads(path.read_text())
  saved["method"]["iprm"]["alpha"] = 0.9
  saved["method"]["aug"]["skipped"] = "untouched"
  path.write_text(json.dumps(saved))
  check_config_matches_workdir(config, workdir, schema_defaults(), unread)
  path.write_text(json.dumps(saved))
  iprm = tiny_config(str(tmp_path))
  iprm.method.name = "iprm"
  iprm.model.unimodal_heads = "separate"
  with pytest.raises(ConfigError, match=r"config\.method\.iprm\.alpha: differs"):
    check_config_matches_workdir(iprm, workdir, schema_defaults(),
                                 Plan.build(iprm).identity.unread)
  saved["method"]["iprm"]["alpha"] = 0.8
  saved["method"]["aug"]["skipped"] = "zero_grad"
  path.write_text(json.dumps(saved))
  with pytest.raises(ConfigError, match=r"config\.method\.aug\.skipped: .* no longer has; it is "
                     r"now optimizer\.zero_grad=zeros_per_batch"):
    check_config_matches_workdir(config, workdir, schema_defaults(), unread)
