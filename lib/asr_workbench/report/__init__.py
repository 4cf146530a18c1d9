"""Display of results: plots, HTML tables, the ipywidgets browser. Reads results; computes no metrics."""

from asr_workbench.report.plots import (cer_bars, cer_vs_parameter, cer_vs_duration, error_types_bar, lr_schedule_plot, setup_cjk_font,
                                        utterance_scatter)
from asr_workbench.report.tables import (Html, changed_utterances, checkpoint_table, comparison_table, config_html,
                                         leaderboard_table, data_report_table, dev_cer_table, diff_html,
                                         finetune_data_table, finetune_summary, summary_table, warnings_html, worst_table)
from asr_workbench.report.widgets import Browser, browser

__all__ = ["setup_cjk_font", "error_types_bar", "cer_vs_duration", "Html", "config_html", "summary_table", "data_report_table",
           "diff_html", "worst_table", "lr_schedule_plot", "warnings_html", "finetune_data_table", "dev_cer_table", "finetune_summary", "cer_bars", "utterance_scatter", "comparison_table",
           "changed_utterances", "checkpoint_table", "leaderboard_table", "cer_vs_parameter", "Browser", "browser"]
