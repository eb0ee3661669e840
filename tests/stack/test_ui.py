"""The UI as a user sees it, in Debian's Chromium against the stack's api-server: the trigger form
with its Params sections and defaults, a run started from it, and the task's extra links to the
HIT preview and the report. Screenshots go to .artifacts/stack/ (look at them)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from conftest import DAG_ID

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SECTIONS = ("Sources", "Model", "HIT", "Workers", "Payments", "Messages", "Storage")
RUN_ID = "ui-form-run"
HIT_TITLE = "Which picture is most similar?"


@pytest.fixture
def page(request, browser, airflow_stack, artifacts):
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, base_url=airflow_stack.url
    )
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    report = getattr(request.node, "stack_call_report", None)
    if report is not None and report.failed:
        for number, open_page in enumerate(context.pages):
            open_page.screenshot(path=str(artifacts / f"failed-{number}.png"), full_page=True)
    context.close()


def shot(page, artifacts, name: str, *, full_page: bool = False) -> None:
    page.wait_for_timeout(300)  # let the last render settle
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=full_page)


def field(dialog, param: str):
    """A Param's input in the trigger form (the form names them element_<param>)."""
    return dialog.locator(f'[name="element_{param}"]')


def loaded_images(page) -> int:
    """How many pictures the page (with its frames) shows; fail on one that did not load."""
    page.wait_for_load_state("load")
    total = 0
    for frame in page.frames:
        sizes = frame.evaluate(
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)"
        )
        assert all(size > 0 for size in sizes), f"a picture did not load in {frame.url}: {sizes}"
        total += len(sizes)
    return total


def open_section(dialog, name: str) -> None:
    """Open a section of the form (an accordion: opening one closes the others)."""
    button = dialog.get_by_role("button", name=name, exact=True)
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    dialog.get_by_role("button", name=name, exact=True, expanded=True).wait_for()
    dialog.page.wait_for_timeout(300)  # the opening animation


def test_trigger_form_run_and_extra_links(
    page, airflow_stack, dag_ready, local_stack, sample, tmp_path, artifacts
):
    stack = airflow_stack
    for old in artifacts.glob("*.png"):
        old.unlink()

    # The DAG's page; simple auth manager with all admins: no login form.
    page.goto(f"/dags/{DAG_ID}")
    trigger = page.get_by_role("button", name="Trigger").first
    trigger.wait_for()
    page.get_by_text("wait_for_assignments").first.wait_for()
    shot(page, artifacts, "01-dag")

    # The trigger form: every Params section, none flagged invalid with its defaults.
    trigger.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"Trigger Dag - {DAG_ID}").wait_for()
    for section in SECTIONS:
        dialog.get_by_role("button", name=section, exact=True).wait_for()
    submit = dialog.get_by_role("button", name="Trigger")
    assert submit.is_enabled(), "the form's defaults do not validate"
    shot(page, artifacts, "02-trigger-form")

    # Each section (one open at a time) shows its defaults; fill it in as a user would.
    open_section(dialog, "Sources")
    assert field(dialog, "dataset_source").input_value() == ".demo/data/dataset"
    shot(page, artifacts, "03-sources-defaults")
    field(dialog, "dataset_source").fill(str(sample.dataset_dir))
    field(dialog, "queries_source").fill(str(sample.queries_dir))
    field(dialog, "known_answers_source").fill(str(sample.known_answers_dir))

    open_section(dialog, "Model")
    assert field(dialog, "model").input_value() == "efficientnet_lite0"
    assert dialog.locator('[id="number-input:element_k"] input').input_value() == "3"

    open_section(dialog, "HIT")
    assert field(dialog, "hit_title").input_value() == HIT_TITLE
    shot(page, artifacts, "04-hit-defaults")

    open_section(dialog, "Workers")
    # Earlier batches on this sandbox may have marked every simulated worker as having failed
    # a known answer; this batch lets them work anyway.
    assert field(dialog, "exclude_failed_workers").is_checked()
    dialog.locator('[id="switch:element_exclude_failed_workers"]').click()
    assert not field(dialog, "exclude_failed_workers").is_checked()

    open_section(dialog, "Storage")
    assert field(dialog, "s3_bucket").input_value() == local_stack.bucket  # the deployment's
    assert field(dialog, "batch_id").input_value() == ""
    # Empty: the DAG's campaign over these sources, one batch for every run.
    assert dialog.get_by_text("Empty: this DAG's campaign over these sources").is_visible()
    field(dialog, "output_dir").fill(str(tmp_path / "output"))
    field(dialog, "embedding_cache").fill(str(tmp_path / "cache"))
    shot(page, artifacts, "05-storage-filled")

    open_section(dialog, "Advanced Options")
    dialog.locator('input[name="dagRunId"]').fill(RUN_ID)
    dialog.get_by_text("Configuration JSON").scroll_into_view_if_needed()
    shot(page, artifacts, "06-advanced-options")
    assert submit.is_enabled()
    submit.click()
    page.get_by_text("Dag run has been successfully triggered").first.wait_for()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/{RUN_ID}"))
    shot(page, artifacts, "07-run-started")

    run = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{RUN_ID}")
    assert run["triggered_by"] == "ui"
    assert run["conf"]["dataset_source"] == str(sample.dataset_dir)
    assert run["conf"]["exclude_failed_workers"] is False
    assert run["conf"]["hit_title"] == HIT_TITLE

    finished = stack.wait_for_run(DAG_ID, RUN_ID, timeout=600)
    states = stack.task_states(DAG_ID, RUN_ID)
    assert finished["state"] == "success", states
    page.reload()
    page.get_by_text("write_results").first.wait_for()
    shot(page, artifacts, "08-run-succeeded")
    # The run's batch is the campaign of this DAG over the sample's folders (fresh per test).
    batches = sorted(path.name for path in (tmp_path / "output").iterdir())
    assert len(batches) == 1 and batches[0].startswith("campaign-"), batches
    batch = batches[0]
    results = tmp_path / "output" / batch / "results"
    assert (results / "report.html").exists()

    # The extra links on the task instances, and where they lead.
    run_path = f"/dags/{DAG_ID}/runs/{quote(RUN_ID)}/tasks"
    page.goto(f"{run_path}/create_hits/details")
    preview = page.get_by_role("link", name="HIT preview", exact=True)
    preview.wait_for()
    href = preview.get_attribute("href")
    assert href.startswith(f"{local_stack.sandbox_url}/hit/"), href
    shot(page, artifacts, "09-create-hits-extra-links")
    with page.expect_popup() as opened:
        preview.click()
    hit_page = opened.value
    hit_page.wait_for_load_state()
    assert hit_page.url == href
    assert HIT_TITLE in hit_page.content()
    # The HTMLQuestion (in the page's iframe) shows two questions of 4 pictures, all loaded
    # from S3 through presigned URLs.
    assert loaded_images(hit_page) >= 8
    shot(hit_page, artifacts, "10-hit-preview", full_page=True)
    hit_page.close()

    page.goto(f"{run_path}/write_results/details")
    report = page.get_by_role("link", name="Report", exact=True)
    report.wait_for()
    href = report.get_attribute("href")
    assert href.startswith(f"{local_stack.s3_url}/{local_stack.bucket}/"), href
    assert f"/batches/{batch}/results/report.html" in href
    shot(page, artifacts, "11-write-results-extra-links")
    with page.expect_popup() as opened:
        report.click()
    report_page = opened.value
    report_page.wait_for_load_state()
    assert batch in report_page.content()
    assert loaded_images(report_page) >= 4
    shot(report_page, artifacts, "12-report", full_page=True)
    report_page.close()
