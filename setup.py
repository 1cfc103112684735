from setuptools import find_packages, setup

setup(
    name="projectx_pipeline",
    version="0.1.0",
    description="Dagster-orchestrated market-data platform for the ProjectX Gateway",
    packages=find_packages(exclude=["projectx_pipeline_tests*"]),
    package_data={
        "projectx_pipeline": ["default_settings.yaml"],
        # Real gateway bars: the simulator's default replay and the test/bench fixtures.
        "projectx_pipeline.sample_data": ["*.csv"],
        "projectx_pipeline.storage": ["migrations/*.sql"],
    },
    python_requires=">=3.10",
    install_requires=[
        # The Dagster set is pinned together: 1.13.28 has no matching webserver.
        "dagster==1.13.27",
        "dagster-webserver==1.13.27",
        "dagster-postgres==0.29.27",
        # SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which dagster-postgres does not install
        # (it ships psycopg2): with 2.1, Dagster cannot open its storage from DAGSTER_PG_URL.
        "sqlalchemy>=2.0,<2.1",
        "psycopg2-binary>=2.9",
        "signalrcore==1.0.2",
        "pandas>=2.1",
        # pandera.pandas exists from 0.24, pandas 3 support from 0.30 (pandas 3 is allowed above)
        "pandera>=0.30",
        "pandas_market_calendars>=4.4",
        "numpy>=1.26",
        "numba>=0.60",
        "pyyaml>=6",
        "pydantic>=2.6",
        "requests>=2.31",
        "aiohttp>=3.9",
        "tzdata",
    ],
    extras_require={
        # wheel: the read-only-install test builds the package without build isolation;
        # ruff and mypy: `make lint` (CI runs it before the tests);
        # pysignalr: a second public SignalR client the simulator's hubs are tested against
        "dev": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "wheel>=0.42", "ruff>=0.6", "mypy>=1.11", "pysignalr==1.3.3"],
    },
    entry_points={"console_scripts": ["projectx=projectx_pipeline.cli:main"]},
)
