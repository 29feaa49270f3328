"""pirl: a self-configuring pipeline for Personalized Invariant Representation Learning (PIRL)."""
from setuptools import find_packages, setup

CONSOLE_SCRIPTS = [
    "pirl_plan_and_preprocess=pirl_pipeline.cli.plan_and_preprocess:main",
    "pirl_train=pirl_pipeline.cli.train:main",
    "pirl_predict=pirl_pipeline.cli.predict:main",
    "pirl_evaluate=pirl_pipeline.cli.evaluate:main",
    "pirl_evaluate_missing=pirl_pipeline.cli.evaluate_missing:main",
    "pirl_find_best_configuration=pirl_pipeline.cli.find_best_configuration:main",
    "pirl_reference=pirl_pipeline.cli.reference:main",
    "pirl_report=pirl_pipeline.cli.report:main",
    "pirl_export_model=pirl_pipeline.cli.model_zip:export_main",
    "pirl_install_model=pirl_pipeline.cli.model_zip:install_main",
    "pirl_demo=pirl_pipeline.demo:main",
    "pirl_convert_brats=dataset_conversion.brats:main",
    "pirl_convert_autopet=dataset_conversion.autopet:main",
    "pirl_convert_folder=dataset_conversion.generic_folder:main",
    "pirl_make_demo_dataset=dataset_conversion.demo_brain:main",
]

setup(
    name="pirl",
    version="0.1.0",
    description="nnU-Net-style self-configuring pipeline for PIRL pre-training, "
    "missing-modality segmentation and modality translation of 3D medical images",
    python_requires=">=3.10",
    packages=find_packages(include=["pirl_pipeline*", "plans*", "dataset_conversion*"]),
    install_requires=[
        "torch==2.13.0",
        "monai[einops]>=1.4",
        "SimpleITK>=2.3",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.2",
        "numpy",
        "scipy",
        "pandas",
        "tqdm",
        "matplotlib",
        "nilearn",
        "nibabel",
    ],
    extras_require={"test": ["pytest", "ruff==0.17.5"]},
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
