"""course_lib.recipes: the named recipes are the shipped adapters' recipes, and each framework config built from
a recipe says the same thing."""
import json

import pytest
import torch

from course_lib import lora, recipes
from course_lib.data import reply_adapter_path, ticket_adapter_path
from course_lib.models import tiny_model
from course_lib.training import TrainConfig


@pytest.mark.parametrize("recipe, folder", [(recipes.TICKET_LORA, ticket_adapter_path),
                                            (recipes.REPLY_LORA, reply_adapter_path)])
def test_recipes_are_the_shipped_adapters_recipes(recipe, folder):
    shipped = json.loads((folder() / "training.json").read_text())["recipe"]
    assert recipe.record() == shipped
    adapter = json.loads((folder() / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == \
        (recipe.r, recipe.alpha, sorted(recipe.target_modules))


def test_replace_routes_training_fields_to_the_config():
    changed = recipes.TICKET_LORA.replace(steps=7, lr=5e-4, r=4)
    assert (changed.r, changed.alpha, changed.train.steps, changed.train.lr) == (4, 16, 7, 5e-4)
    assert changed.train.batch_size == recipes.TICKET_LORA.train.batch_size
    assert recipes.TICKET_LORA.train.steps == 60  # frozen: the named recipe is unchanged
    with pytest.raises(ValueError, match="multiple of accumulation"):
        recipes.TICKET_LORA.replace(accumulation=3)
    with pytest.raises(TypeError):
        recipes.TICKET_LORA.replace(rank=4)


def test_inject_starts_from_the_recipes_seed_whatever_ran_before():
    def start(recipe, noise):
        model, _ = tiny_model(seed=0)
        torch.manual_seed(noise)
        torch.rand(noise * 10)  # whatever ran before
        recipe.inject(model)
        return lora.adapter_state_dict(model)

    first, second = start(recipes.TICKET_LORA, 1), start(recipes.TICKET_LORA, 2)
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = start(recipes.TICKET_LORA.replace(seed=1), 1)
    assert any(not torch.equal(v, first[k]) for k, v in other.items())


def test_framework_configs_say_what_the_recipe_says(tmp_path):
    recipe = recipes.KNOWLEDGE_LORA.replace(accumulation=2, warmup_steps=3, seed=5)
    peft = recipe.peft_config()
    assert (peft.r, peft.lora_alpha, set(peft.target_modules), peft.lora_dropout) == \
        (16, 32, set(lora.ALL_LINEAR), 0.0)
    args = recipe.training_arguments(str(tmp_path), logging_steps=5)
    assert (args.max_steps, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (60, 4, 2)
    assert (args.learning_rate, args.warmup_steps, args.seed, args.logging_steps) == (1e-3, 3, 5, 5)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "constant_with_warmup"
    assert args.max_grad_norm == 0.0


def test_fit_trains_the_injected_adapters_with_the_recipes_config(tiny):
    from course_lib import classify
    from course_lib.data import load_tickets

    model, tokenizer = tiny
    recipe = recipes.TICKET_LORA.replace(steps=3, batch_size=4, r=2, alpha=4)
    history, seconds = recipe.fit(model, classify.examples(tokenizer, load_tickets("train")[:8]),
                                  tokenizer.pad_token_id, progress=False)
    assert len(history["loss"]) == 3 and seconds > 0
    assert {layer.r for _, layer in lora.lora_layers(model)} == {2}
    assert isinstance(recipe.train, TrainConfig)


def test_ship_adapter_writes_a_peft_folder_with_its_record_readable_by_all(tmp_path, tiny):
    model, _ = tiny
    recipes.TICKET_LORA.inject(model)
    record = {"recipe": recipes.TICKET_LORA.record(), "final_loss": 0.25}
    recipes.ship_adapter(model, tmp_path / "adapter", record)
    folder = tmp_path / "adapter"
    assert json.loads((folder / "training.json").read_text()) == record
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["base_model_name_or_path"]) == (8, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}
