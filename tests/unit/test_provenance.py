"""Which commit an image is: the labels a build writes and the rules for reusing or accepting one."""

from __future__ import annotations

from fanout.provenance import REVISION, SOURCE, build_labels, ci_image_problem, config_labels, reusable

SHA, OTHER, DIGEST = "a" * 40, "b" * 40, "sha256:" + "c" * 64


def test_build_labels_name_the_full_commit_and_the_repository():
    assert build_labels(SHA, "https://git.example/app.git") == {REVISION: SHA, SOURCE: "https://git.example/app.git"}


def test_labels_are_read_from_the_config_blob():
    assert config_labels({"config": {"Labels": {REVISION: SHA}}}) == {REVISION: SHA}
    assert config_labels({"config": {}}) == {} and config_labels({}) == {}


def test_only_an_image_labelled_with_the_commit_is_reused():
    assert reusable({REVISION: SHA}, SHA)
    assert not reusable({REVISION: OTHER}, SHA)
    assert not reusable({}, SHA) and not reusable(None, SHA)


def test_a_ci_image_naming_another_commit_is_refused_even_when_unlabelled_ones_are_allowed():
    for allow in (False, True):
        problem = ci_image_problem({REVISION: OTHER}, SHA, DIGEST, allow)
        assert problem is not None and OTHER in problem and SHA in problem and problem.startswith("image:")


def test_an_unlabelled_ci_image_needs_the_fleet_to_allow_it():
    problem = ci_image_problem({}, SHA, DIGEST, allow_unlabelled=False)
    assert problem is not None and "allow_unlabelled_images" in problem and REVISION in problem
    assert ci_image_problem({}, SHA, DIGEST, allow_unlabelled=True) is None
    assert ci_image_problem({REVISION: SHA}, SHA, DIGEST, allow_unlabelled=False) is None
