"""IOD builders and readers, one module per stream kind, and the video codec.

==================  ==============================================  ======================
module              builder                                         SOP Class
==================  ==============================================  ======================
:mod:`.waveform`    :func:`~.waveform.build_waveform`               General ECG /
                                                                    Hemodynamic /
                                                                    Respiratory Waveform
:mod:`.video`       :func:`~.video.build_video`                     Video Endoscopic /
                                                                    Video Photographic
:mod:`.video`       :func:`~.video.build_multiframe_sc`             Multi-frame True Color
                                                                    Secondary Capture
:mod:`.video`       :func:`~.video.build_snapshot`                  VL Endoscopic Image /
                                                                    Secondary Capture
:mod:`.pose`        :func:`~.pose.build_pose_sr`                    Comprehensive 3D SR
==================  ==============================================  ======================

:mod:`.common` holds the modules every IOD shares, :mod:`.bulk` the file-to-file Pixel Data
values and :mod:`.codec` the H.264/HEVC encoder and MPEG-TS muxer.
"""
