"""De-identification of analyst tables: DICOM PS3.15 Annex E, Basic Application Level
Confidentiality Profile, applied to the ``scans`` rows and their DICOM JSON header.

Layers:

* :func:`resolve_secret` finds the secret that keys every pseudonym (environment variable,
  secret file, or a file generated once in the user's config directory).
* :class:`Pseudonymizer` is the pure-Python core (no Spark): consistent UIDs
  (:meth:`~Pseudonymizer.uid`), pseudonymous patient keys, per-patient date shifts, the profile
  applied to a DICOM JSON document (:meth:`~Pseudonymizer.deidentify_dataset_json`) and to one
  ``scans`` row (:meth:`~Pseudonymizer.deidentify_row`). It is picklable and is shipped to
  executors as part of the task closure.
* :func:`deidentify_scans` and :func:`phi_map` are thin Spark wrappers.

Everything is a keyed hash (HMAC-SHA256) of the original value with the secret: the same input
and secret give the same pseudonym on every executor and in every run, so re-ingesting a file
updates its row instead of adding one, and studies from different runs stay linked. Whoever
holds the secret and an original value can confirm a pseudonym; nobody can invert one. A change
of secret therefore changes every pseudonym (all keys of the ``scans`` table): keep it.

The attribute actions follow PS3.15 Table E.1-1 (Application Level Confidentiality Profile
Attributes) as of the 2023/2024 editions, written down here from the standard as the author
knows it (the table was not machine-read); entries marked ``beyond`` in :data:`ACTIONS` go
further than the Basic Profile. The codes are those of Table E.1-1:

* ``X`` remove; ``Z`` replace with a zero-length value; ``D`` replace with a dummy value;
  ``U`` replace with a consistent UID; ``K`` keep; ``C`` clean (for dates: shift).

Simplifications, deliberate for analyst tables (no DICOM object is written back, so Type 1/2
conformance of the JSON does not matter, while leaking does):

* ``D`` is honoured as ``Z`` (empty value) for elements and ``X`` for sequences, except Patient
  ID (0010,0020) whose dummy is the pseudonymous patient key (analysts count patients with it).
* Composite actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``) take the first, strictest choice;
  ``X/Z/U`` reference sequences (Referenced Image (0008,1140), Source Image (0008,2112), ...)
  are kept and cleaned recursively, their UIDs replaced (the ``U`` choice), so references
  between pseudonymised instances still resolve.
* Every UI value is replaced (``U``) except UIDs defined by DICOM (root 1.2.840.10008.) and
  attributes that hold class, syntax or coding-scheme UIDs (:data:`KEPT_UID_TAGS`), not only the
  UIDs listed in E.1-1: a UID from the hospital's root is a link back to its PACS.
* Every PN value (person name), AE title and UR (URL) value is removed, listed or not: names
  of staff, the hospital's application entities and retrieve URLs (which carry original UIDs)
  identify the source. Stricter than E.1-1.
* Dates (VR DA, DT) anywhere are shifted by the patient's offset with ``shift_dates`` (Retain
  Longitudinal Temporal Information with Modified Dates Option, E.3.6), else removed; the
  option's "C" is implemented as a whole-day shift, so times (VR TM) are kept as they are. With
  ``shift_dates`` off, the times that E.1-1 lists (Study Time (0008,0030), ...) are removed
  with their dates, as the Basic Profile does. Patient's Birth Date (0010,0030) is removed in
  every case (E.1-1 gives no option that keeps it); Patient's Age (0010,1010) is the option
  that retains age.
* The Clean Descriptors, Clean Structured Content, Clean Graphics and Clean Pixel Data options
  are not implemented: descriptions, SR Content Sequence (0040,A730), Graphic Annotation
  Sequence (0070,0001), Icon Image Sequence (0088,0200) and overlays are removed instead.
  Pixel data is not in the analyst tables (only as a bulk-data reference), and burnt-in
  annotation in pixels is not addressed here at all.
* Free text in attributes that E.1-1 does not list (e.g. a site putting a name into Body Part
  Examined (0018,0015)) is not detected: the profile assumes standard use of attributes.
* Private attributes (odd group) are removed unless listed in ``safe_private_tags`` (Retain
  Safe Private Option, E.3.10), matched by tag with its block byte only: the private creator
  string is not checked, so a safe list must only name tags from the vendors actually ingested.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medspark.config import DeidConfig
from medspark.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

SECRET_FILE_NAME = "deid_secret"

# Action codes of PS3.15 Table E.1-1.
REMOVE = "X"
EMPTY = "Z"
DUMMY = "D"
KEEP = "K"

# Which Table E.1-1 option column turns an action into K (or C for dates).
DATES = "dates"  # Retain Longitudinal Temporal Information with Modified Dates (C: shift)
PATIENT = "patient"  # Retain Patient Characteristics (K)
DEVICE = "device"  # Retain Device Identity (K)

#: Attribute actions: tag "GGGGEEEE" -> (keyword, Basic Profile action, option or "").
#: From PS3.15 Table E.1-1; the comment "beyond" marks rows that are not in the table (or are
#: stricter than it) and are removed here because they identify a patient, person or site.
ACTIONS: dict[str, tuple[str, str, str]] = {
    # --- Patient identification (Patient module, Patient Identification) ---
    "00100010": ("PatientName", EMPTY, ""),
    "00100020": ("PatientID", DUMMY, ""),  # Z in E.1-1; dummy = pseudonymous patient key
    "00100021": ("IssuerOfPatientID", REMOVE, ""),
    "00100024": ("IssuerOfPatientIDQualifiersSequence", REMOVE, ""),
    "00100030": ("PatientBirthDate", EMPTY, ""),
    "00100032": ("PatientBirthTime", REMOVE, ""),
    "00100033": ("PatientBirthDateInAlternativeCalendar", REMOVE, ""),
    "00100034": ("PatientDeathDateInAlternativeCalendar", REMOVE, ""),
    "00100035": ("PatientAlternativeCalendar", REMOVE, ""),
    "00100050": ("PatientInsurancePlanCodeSequence", REMOVE, ""),
    "00100101": ("PatientPrimaryLanguageCodeSequence", REMOVE, ""),
    "00100102": ("PatientPrimaryLanguageModifierCodeSequence", REMOVE, ""),
    "00101000": ("OtherPatientIDs", REMOVE, ""),
    "00101001": ("OtherPatientNames", REMOVE, ""),
    "00101002": ("OtherPatientIDsSequence", REMOVE, ""),
    "00101005": ("PatientBirthName", REMOVE, ""),
    "00101040": ("PatientAddress", REMOVE, ""),
    "00101050": ("InsurancePlanIdentification", REMOVE, ""),
    "00101060": ("PatientMotherBirthName", REMOVE, ""),
    "00101080": ("MilitaryRank", REMOVE, ""),
    "00101081": ("BranchOfService", REMOVE, ""),
    "00101090": ("MedicalRecordLocator", REMOVE, ""),
    "00101100": ("ReferencedPatientPhotoSequence", REMOVE, ""),
    "00102150": ("CountryOfResidence", REMOVE, ""),
    "00102152": ("RegionOfResidence", REMOVE, ""),
    "00102154": ("PatientTelephoneNumbers", REMOVE, ""),
    "00102155": ("PatientTelecomInformation", REMOVE, ""),
    "00102160": ("EthnicGroup", REMOVE, ""),
    "00102180": ("Occupation", REMOVE, ""),
    "001021F0": ("PatientReligiousPreference", REMOVE, ""),
    "00102297": ("ResponsiblePerson", REMOVE, ""),
    "00102299": ("ResponsibleOrganization", REMOVE, ""),
    "00104000": ("PatientComments", REMOVE, ""),
    "00380010": ("AdmissionID", REMOVE, ""),
    "00380011": ("IssuerOfAdmissionID", REMOVE, ""),
    "00380014": ("IssuerOfAdmissionIDSequence", REMOVE, ""),
    "0038001E": ("ScheduledPatientInstitutionResidence", REMOVE, ""),
    "00380020": ("AdmittingDate", REMOVE, ""),
    "00380021": ("AdmittingTime", REMOVE, ""),
    "00380040": ("DischargeDiagnosisDescription", REMOVE, ""),
    "00380050": ("SpecialNeeds", REMOVE, ""),
    "00380060": ("ServiceEpisodeID", REMOVE, ""),
    "00380061": ("IssuerOfServiceEpisodeID", REMOVE, ""),
    "00380062": ("ServiceEpisodeDescription", REMOVE, ""),
    "00380300": ("CurrentPatientLocation", REMOVE, ""),
    "00380400": ("PatientInstitutionResidence", REMOVE, ""),
    "00380500": ("PatientState", REMOVE, ""),
    "00384000": ("VisitComments", REMOVE, ""),
    "00381234": ("ReferencedPatientAliasSequence", REMOVE, ""),
    "00081120": ("ReferencedPatientSequence", REMOVE, ""),
    # --- Patient characteristics: kept with Retain Patient Characteristics Option ---
    "00101010": ("PatientAge", REMOVE, PATIENT),
    "00100040": ("PatientSex", EMPTY, PATIENT),
    "00101020": ("PatientSize", REMOVE, PATIENT),
    "00101030": ("PatientWeight", REMOVE, PATIENT),
    "00102203": ("PatientSexNeutered", REMOVE, PATIENT),
    "001021A0": ("SmokingStatus", REMOVE, PATIENT),
    "001021C0": ("PregnancyStatus", REMOVE, PATIENT),
    "00102000": ("MedicalAlerts", REMOVE, ""),
    "00102110": ("Allergies", REMOVE, ""),
    "001021B0": ("AdditionalPatientHistory", REMOVE, ""),
    "001021D0": ("LastMenstrualDate", REMOVE, ""),
    # --- Study, visit and request identification ---
    "00080050": ("AccessionNumber", EMPTY, ""),
    "00080051": ("IssuerOfAccessionNumberSequence", REMOVE, ""),  # beyond
    "00200010": ("StudyID", EMPTY, ""),
    "00320012": ("StudyIDIssuer", REMOVE, ""),
    "00081030": ("StudyDescription", REMOVE, ""),
    "0008103E": ("SeriesDescription", REMOVE, ""),
    "00181030": ("ProtocolName", REMOVE, ""),  # X/D
    "00081080": ("AdmittingDiagnosesDescription", REMOVE, ""),
    "00081084": ("AdmittingDiagnosesCodeSequence", REMOVE, ""),
    "00084000": ("IdentifyingComments", REMOVE, ""),
    "00204000": ("ImageComments", REMOVE, ""),
    "00209158": ("FrameComments", REMOVE, ""),
    "00284000": ("ImagePresentationComments", REMOVE, ""),
    "00324000": ("StudyComments", REMOVE, ""),
    "00321030": ("ReasonForStudy", REMOVE, ""),
    "00321032": ("RequestingPhysician", REMOVE, ""),
    "00321033": ("RequestingService", REMOVE, ""),
    "00321060": ("RequestedProcedureDescription", REMOVE, ""),
    "00321070": ("RequestedContrastAgent", REMOVE, ""),
    "00321020": ("ScheduledStudyLocation", REMOVE, ""),
    "00321021": ("ScheduledStudyLocationAETitle", REMOVE, ""),
    "00082111": ("DerivationDescription", REMOVE, ""),
    "00184000": ("AcquisitionComments", REMOVE, ""),
    "00181400": ("AcquisitionDeviceProcessingDescription", REMOVE, ""),
    "00189424": ("AcquisitionProtocolDescription", REMOVE, ""),
    "00400555": ("AcquisitionContextSequence", REMOVE, ""),
    "00400556": ("AcquisitionContextDescription", REMOVE, ""),
    "00180010": ("ContrastBolusAgent", REMOVE, ""),  # Z/D
    "00400012": ("PreMedication", REMOVE, ""),
    "00400275": ("RequestAttributesSequence", REMOVE, ""),
    "00401001": ("RequestedProcedureID", REMOVE, ""),
    "00401005": ("RequestedProcedureLocation", REMOVE, ""),
    "00401010": ("NamesOfIntendedRecipientsOfResults", REMOVE, ""),
    "00401011": ("IntendedRecipientsOfResultsIdentificationSequence", REMOVE, ""),
    "00401101": ("PersonIdentificationCodeSequence", REMOVE, ""),  # D
    "00401102": ("PersonAddress", REMOVE, ""),
    "00401103": ("PersonTelephoneNumbers", REMOVE, ""),
    "00401104": ("PersonTelecomInformation", REMOVE, ""),
    "00401400": ("RequestedProcedureComments", REMOVE, ""),
    "00402001": ("ReasonForTheImagingServiceRequest", REMOVE, ""),
    "00402008": ("OrderEnteredBy", REMOVE, ""),
    "00402009": ("OrderEntererLocation", REMOVE, ""),
    "00402010": ("OrderCallbackPhoneNumber", REMOVE, ""),
    "00402011": ("OrderCallbackTelecomInformation", REMOVE, ""),
    "00402016": ("PlacerOrderNumberImagingServiceRequest", EMPTY, ""),
    "00402017": ("FillerOrderNumberImagingServiceRequest", EMPTY, ""),
    "00402400": ("ImagingServiceRequestComments", REMOVE, ""),
    "00403001": ("ConfidentialityConstraintOnPatientDataDescription", REMOVE, ""),
    # --- Scheduled / performed procedure steps ---
    "00400001": ("ScheduledStationAETitle", REMOVE, ""),
    "00400002": ("ScheduledProcedureStepStartDate", REMOVE, ""),
    "00400003": ("ScheduledProcedureStepStartTime", REMOVE, ""),
    "00400004": ("ScheduledProcedureStepEndDate", REMOVE, ""),
    "00400005": ("ScheduledProcedureStepEndTime", REMOVE, ""),
    "00400006": ("ScheduledPerformingPhysicianName", REMOVE, ""),
    "00400007": ("ScheduledProcedureStepDescription", REMOVE, ""),
    "00400009": ("ScheduledProcedureStepID", REMOVE, ""),
    "0040000B": ("ScheduledPerformingPhysicianIdentificationSequence", REMOVE, ""),
    "00400010": ("ScheduledStationName", REMOVE, ""),
    "00400011": ("ScheduledProcedureStepLocation", REMOVE, ""),
    "00404025": ("ScheduledStationNameCodeSequence", REMOVE, ""),
    "00404027": ("ScheduledStationGeographicLocationCodeSequence", REMOVE, ""),
    "00404034": ("ScheduledHumanPerformersSequence", REMOVE, ""),
    "00400241": ("PerformedStationAETitle", REMOVE, ""),
    "00400242": ("PerformedStationName", REMOVE, ""),
    "00400243": ("PerformedLocation", REMOVE, ""),
    "00400244": ("PerformedProcedureStepStartDate", REMOVE, DATES),
    "00400245": ("PerformedProcedureStepStartTime", REMOVE, DATES),
    "00400250": ("PerformedProcedureStepEndDate", REMOVE, DATES),
    "00400251": ("PerformedProcedureStepEndTime", REMOVE, DATES),
    "00400253": ("PerformedProcedureStepID", REMOVE, ""),
    "00400254": ("PerformedProcedureStepDescription", REMOVE, ""),
    "00400280": ("CommentsOnThePerformedProcedureStep", REMOVE, ""),
    "00400310": ("CommentsOnRadiationDose", REMOVE, ""),
    "00404028": ("PerformedStationNameCodeSequence", REMOVE, ""),
    "00404030": ("PerformedStationGeographicLocationCodeSequence", REMOVE, ""),
    "00404035": ("ActualHumanPerformersSequence", REMOVE, ""),
    "00404036": ("HumanPerformerOrganization", REMOVE, ""),
    "00404037": ("HumanPerformerName", REMOVE, ""),
    # --- Institution and staff ---
    "00080080": ("InstitutionName", REMOVE, ""),  # X/Z/D
    "00080081": ("InstitutionAddress", REMOVE, ""),
    "00080082": ("InstitutionCodeSequence", REMOVE, ""),
    "00081040": ("InstitutionalDepartmentName", REMOVE, ""),
    "00081041": ("InstitutionalDepartmentTypeCodeSequence", REMOVE, ""),
    "00080090": ("ReferringPhysicianName", EMPTY, ""),
    "00080092": ("ReferringPhysicianAddress", REMOVE, ""),
    "00080094": ("ReferringPhysicianTelephoneNumbers", REMOVE, ""),
    "00080096": ("ReferringPhysicianIdentificationSequence", REMOVE, ""),
    "0008009C": ("ConsultingPhysicianName", REMOVE, ""),
    "0008009D": ("ConsultingPhysicianIdentificationSequence", REMOVE, ""),
    "00081048": ("PhysiciansOfRecord", REMOVE, ""),
    "00081049": ("PhysiciansOfRecordIdentificationSequence", REMOVE, ""),
    "00081050": ("PerformingPhysicianName", REMOVE, ""),
    "00081052": ("PerformingPhysicianIdentificationSequence", REMOVE, ""),
    "00081060": ("NameOfPhysiciansReadingStudy", REMOVE, ""),
    "00081062": ("PhysiciansReadingStudyIdentificationSequence", REMOVE, ""),
    "00081070": ("OperatorsName", REMOVE, ""),
    "00081072": ("OperatorIdentificationSequence", REMOVE, ""),
    "0040A073": ("VerifyingObserverSequence", REMOVE, ""),  # D
    "0040A075": ("VerifyingObserverName", EMPTY, ""),  # D
    "0040A027": ("VerifyingOrganization", REMOVE, ""),
    "0040A088": ("VerifyingObserverIdentificationCodeSequence", EMPTY, ""),
    "0040A078": ("AuthorObserverSequence", REMOVE, ""),
    "0040A07A": ("ParticipantSequence", REMOVE, ""),
    "0040A07C": ("CustodialOrganizationSequence", REMOVE, ""),
    "0040A123": ("PersonName", EMPTY, ""),  # D
    "0040A352": ("VerbalSourceTrial", REMOVE, ""),
    "0040A358": ("VerbalSourceIdentifierCodeSequenceTrial", REMOVE, ""),
    "00700084": ("ContentCreatorName", EMPTY, ""),
    "00700086": ("ContentCreatorIdentificationCodeSequence", REMOVE, ""),
    "300E0008": ("ReviewerName", REMOVE, ""),
    "40080114": ("PhysicianApprovingInterpretation", REMOVE, ""),
    # --- Equipment: kept with Retain Device Identity Option (serials: see below) ---
    "00081010": ("StationName", REMOVE, DEVICE),
    "00080070": ("Manufacturer", KEEP, DEVICE),  # not in E.1-1; removed when device off
    "00081090": ("ManufacturerModelName", KEEP, DEVICE),  # not in E.1-1; likewise
    # Serial numbers and device ids: E.1-1 keeps them with Retain Device Identity, medspark's
    # DeidConfig removes them always (a serial names one machine in one hospital).
    "00181000": ("DeviceSerialNumber", REMOVE, ""),
    "00181002": ("DeviceUID", REMOVE, ""),
    "00181004": ("PlateID", REMOVE, ""),
    "00181005": ("GeneratorID", REMOVE, ""),
    "00181007": ("CassetteID", REMOVE, ""),
    "00181008": ("GantryID", REMOVE, ""),
    "00181009": ("UniqueDeviceIdentifier", REMOVE, ""),
    "0018100A": ("UDISequence", REMOVE, ""),
    "0018700A": ("DetectorID", REMOVE, ""),
    "00203401": ("ModifyingDeviceID", REMOVE, ""),
    "00203404": ("ModifyingDeviceManufacturer", REMOVE, ""),
    "00203406": ("ModifiedImageDescription", REMOVE, ""),
    "30080105": ("SourceSerialNumber", REMOVE, ""),
    # --- Dates and times listed in E.1-1 (C = shift with the dates option) ---
    "00080012": ("InstanceCreationDate", REMOVE, DATES),
    "00080013": ("InstanceCreationTime", REMOVE, DATES),
    "00080015": ("InstanceCoercionDateTime", REMOVE, ""),
    "00080020": ("StudyDate", EMPTY, DATES),
    "00080021": ("SeriesDate", REMOVE, DATES),
    "00080022": ("AcquisitionDate", REMOVE, DATES),
    "00080023": ("ContentDate", EMPTY, DATES),
    "00080024": ("OverlayDate", REMOVE, DATES),
    "00080025": ("CurveDate", REMOVE, DATES),
    "0008002A": ("AcquisitionDateTime", REMOVE, DATES),
    "00080030": ("StudyTime", EMPTY, DATES),
    "00080031": ("SeriesTime", REMOVE, DATES),
    "00080032": ("AcquisitionTime", REMOVE, DATES),
    "00080033": ("ContentTime", EMPTY, DATES),
    "00080034": ("OverlayTime", REMOVE, DATES),
    "00080035": ("CurveTime", REMOVE, DATES),
    "00080201": ("TimezoneOffsetFromUTC", REMOVE, ""),
    "00181012": ("DateOfSecondaryCapture", REMOVE, DATES),
    "00181014": ("TimeOfSecondaryCapture", REMOVE, DATES),
    "00181200": ("DateOfLastCalibration", REMOVE, DATES),
    "00181201": ("TimeOfLastCalibration", REMOVE, DATES),
    "300A0006": ("RTPlanDate", REMOVE, DATES),
    "300A0007": ("RTPlanTime", REMOVE, DATES),
    # --- Structured content, annotations, text ---
    "0040A730": ("ContentSequence", REMOVE, ""),  # X (Clean Structured Content not done)
    "00700001": ("GraphicAnnotationSequence", REMOVE, ""),  # D
    "00880200": ("IconImageSequence", REMOVE, ""),
    "00880904": ("TopicTitle", REMOVE, ""),
    "00880906": ("TopicSubject", REMOVE, ""),
    "00880910": ("TopicAuthor", REMOVE, ""),
    "00880912": ("TopicKeywords", REMOVE, ""),
    "20300020": ("TextString", REMOVE, ""),
    "40000010": ("Arbitrary", REMOVE, ""),
    "40004000": ("TextComments", REMOVE, ""),
    "40080042": ("ResultsIDIssuer", REMOVE, ""),
    "40080102": ("InterpretationRecorder", REMOVE, ""),
    "4008010A": ("InterpretationTranscriber", REMOVE, ""),
    "4008010B": ("InterpretationText", REMOVE, ""),
    "4008010C": ("InterpretationAuthor", REMOVE, ""),
    "40080111": ("InterpretationApproverSequence", REMOVE, ""),
    "40080115": ("InterpretationDiagnosisDescription", REMOVE, ""),
    "40080118": ("ResultsDistributionListSequence", REMOVE, ""),
    "40080119": ("DistributionName", REMOVE, ""),
    "4008011A": ("DistributionAddress", REMOVE, ""),
    "40080202": ("InterpretationIDIssuer", REMOVE, ""),
    "40080300": ("Impressions", REMOVE, ""),
    "40084000": ("ResultsComments", REMOVE, ""),
    "0018A003": ("ContributionDescription", REMOVE, ""),
    "30060002": ("StructureSetLabel", REMOVE, ""),  # D
    "30060004": ("StructureSetName", REMOVE, ""),
    "30060006": ("StructureSetDescription", REMOVE, ""),
    "30060028": ("ROIDescription", REMOVE, ""),
    "30060038": ("ROIGenerationDescription", REMOVE, ""),
    "30060085": ("ROIObservationLabel", REMOVE, ""),
    "30060088": ("ROIObservationDescription", REMOVE, ""),
    "300600A6": ("ROIInterpreter", EMPTY, ""),
    "300A0002": ("RTPlanLabel", REMOVE, ""),  # D
    "300A0003": ("RTPlanName", REMOVE, ""),
    "300A0004": ("RTPlanDescription", REMOVE, ""),
    "300A000E": ("PrescriptionDescription", REMOVE, ""),
    "300A0016": ("DoseReferenceDescription", REMOVE, ""),
    "300A0072": ("FractionGroupDescription", REMOVE, ""),
    "300A0216": ("SourceManufacturer", REMOVE, ""),
    # --- Specimens ---
    "00400512": ("ContainerIdentifier", EMPTY, ""),
    "00400513": ("IssuerOfTheContainerIdentifierSequence", REMOVE, ""),
    "00400551": ("SpecimenIdentifier", EMPTY, ""),
    "00400562": ("IssuerOfTheSpecimenIdentifierSequence", REMOVE, ""),
    # --- Security and provenance: would carry original values or signatures over them ---
    "04000561": ("OriginalAttributesSequence", REMOVE, ""),
    "04000100": ("DigitalSignatureUID", REMOVE, ""),
    "04000402": ("ReferencedDigitalSignatureSequence", REMOVE, ""),
    "04000403": ("ReferencedSOPInstanceMACSequence", REMOVE, ""),
    "04000404": ("MAC", REMOVE, ""),
    "FFFAFFFA": ("DigitalSignaturesSequence", REMOVE, ""),
    "04000500": ("EncryptedAttributesSequence", REMOVE, ""),  # beyond
    "00001000": ("AffectedSOPInstanceUID", REMOVE, ""),
    # --- Clinical trial identification (beyond: usually added after de-identification, but
    #     an earlier trial's subject/site ids must not survive into our tables) ---
    "00120010": ("ClinicalTrialSponsorName", REMOVE, ""),
    "00120030": ("ClinicalTrialSiteID", REMOVE, ""),
    "00120031": ("ClinicalTrialSiteName", REMOVE, ""),
    "00120040": ("ClinicalTrialSubjectID", REMOVE, ""),
    "00120042": ("ClinicalTrialSubjectReadingID", REMOVE, ""),
    "00120060": ("ClinicalTrialCoordinatingCenterName", REMOVE, ""),
    "00120081": ("ClinicalTrialProtocolEthicsCommitteeName", REMOVE, ""),
    "00120082": ("ClinicalTrialProtocolEthicsCommitteeApprovalNumber", REMOVE, ""),
    # --- File meta (PS3.10; not in E.1-1, which covers the data set): the application entities
    #     that sent and received the file name the hospital's systems (beyond) ---
    "00020016": ("SourceApplicationEntityTitle", REMOVE, ""),
    "00020017": ("SendingApplicationEntityTitle", REMOVE, ""),
    "00020018": ("ReceivingApplicationEntityTitle", REMOVE, ""),
    "00020100": ("PrivateInformationCreatorUID", REMOVE, ""),
    "00020102": ("PrivateInformation", REMOVE, ""),
}

#: UI attributes whose value names a class, syntax, scheme or template, not an instance: kept.
#: (Any value under the DICOM root 1.2.840.10008. is kept too, wherever it appears.)
KEPT_UID_TAGS: frozenset[str] = frozenset(
    {
        "00020002",  # Media Storage SOP Class UID
        "00020010",  # Transfer Syntax UID
        "00020012",  # Implementation Class UID (the writing software, not the site)
        "00041510",  # Referenced SOP Class UID in File
        "00041512",  # Referenced Transfer Syntax UID in File
        "00080016",  # SOP Class UID
        "0008001A",  # Related General SOP Class UID
        "0008001B",  # Original Specialized SOP Class UID
        "00080062",  # SOP Classes in Study
        "0008010C",  # Coding Scheme UID
        "00080117",  # Context UID
        "00080118",  # Mapping Resource UID
        "00081150",  # Referenced SOP Class UID
    }
)

#: Patient Identity Removed (0012,0062), De-identification Method (0012,0063) and its Code
#: Sequence (0012,0064), Longitudinal Temporal Information Modified (0028,0303).
TAG_IDENTITY_REMOVED = "00120062"
TAG_DEID_METHOD = "00120063"
TAG_DEID_METHOD_CODES = "00120064"
TAG_LONGITUDINAL_MODIFIED = "00280303"
TAG_PATIENT_ID = "00100020"
TAG_SOP_INSTANCE_UID = "00080018"
TAG_MEDIA_SOP_INSTANCE_UID = "00020003"

#: CID 7050 De-identification Method codes (scheme DCM) written to (0012,0064).
CODE_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
CODE_PATIENT_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")
CODE_DEVICE_IDENTITY = ("113109", "Retain Device Identity Option")
CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")

_DICOM_UID_ROOT = "1.2.840.10008."
_MAX_UID_LEN = 64
# VRs whose every value identifies a person, an application entity or a location of the source.
_ALWAYS_REMOVED_VRS = {"PN": EMPTY, "AE": REMOVE, "UR": REMOVE}
_DATE_VRS = ("DA", "DT")

#: ``scans`` columns and what :meth:`Pseudonymizer.deidentify_row` does with them. Anything else
#: is refused: a new column must be classified here before it can reach an analyst table.
UID_COLUMNS = ("sop_instance_uid", "study_instance_uid", "series_instance_uid")
DEVICE_COLUMNS = ("station_name", "manufacturer", "manufacturer_model_name")
PASSTHROUGH_COLUMNS = frozenset(
    {
        # Class/syntax UIDs and image geometry: no identity.
        "sop_class_uid",
        "transfer_syntax_uid",
        "modality",
        "body_part_examined",
        "rows",
        "columns",
        "number_of_frames",
        "samples_per_pixel",
        "bits_allocated",
        "bits_stored",
        "photometric_interpretation",
        "pixel_spacing",
        "imager_pixel_spacing",
        "slice_thickness",
        "image_position_patient",
        "image_orientation_patient",
        "has_pixels",
        # Source fields. RISK, kept on purpose for now: hospital exports often name folders and
        # files after the patient (e.g. /export/DOE_JOHN_1234567/IM0001), and both columns then
        # carry that name into the analyst table. Data engineers need them to re-read the
        # files; whether they move to the restricted table is the lead's decision.
        "source_uri",
        "archive_member",
        # size and SHA-256 of the original bytes: not identifying by themselves, but the hash
        # lets whoever holds the original file confirm it is in the table.
        "size",
        "sha256",
        # Bookkeeping columns of the written table.
        "run_id",
        "ingested_at",
    }
)
HANDLED_COLUMNS = frozenset(
    {
        *UID_COLUMNS,
        *DEVICE_COLUMNS,
        "patient_id",
        "study_date",
        "study_time",
        "study_datetime",
        "acquisition_datetime",
        "institution_name",
        "header_json",
    }
)


# --------------------------------------------------------------------------------------
# Secret
# --------------------------------------------------------------------------------------


def default_secret_path() -> Path:
    """``$XDG_CONFIG_HOME/medspark/deid_secret``, ``~/.config/medspark/deid_secret`` if unset.

    The XDG Base Directory specification says a relative XDG_CONFIG_HOME is invalid and must be
    ignored; so is an empty one.
    """
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "medspark" / SECRET_FILE_NAME


def _read_secret_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"de-identification secret {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}",
            UserWarning,
            stacklevel=3,
        )
    secret = path.read_bytes().strip()
    if not secret:
        raise ConfigError("deid.secret_file", str(path), "a file holding a non-empty secret")
    return secret


def _create_secret_file(path: Path) -> bytes:
    """Write 32 random bytes (hex) to ``path`` with mode 0600, unless another process won.

    The file is written under a temporary name and published with ``os.link``, which fails
    when the target exists: two processes starting at once never see a half-written secret,
    and both end up with the one that was published first.
    """
    created_dir = not path.parent.exists()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created_dir:
        os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
    secret = secrets.token_hex(32).encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=".deid_secret.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret_file(path)
    finally:
        os.unlink(tmp)
    print(
        f"medspark: created the de-identification secret {path} (mode 0600); keep it and back "
        "it up: without it pseudonyms and date shifts cannot be reproduced",
        file=sys.stderr,
    )
    return secret


def resolve_secret(config: DeidConfig) -> bytes:
    """The secret that keys every pseudonym and date shift.

    In order: the environment variable named by ``config.secret_env`` when set and non-empty;
    else ``config.secret_file``, which must exist; else :func:`default_secret_path`, created
    with 64 random hex digits (mode 0600, directory 0700) on first use, with one line on
    stderr saying where, and reused afterwards. A secret file that group or others can read is
    used with a warning (refusing it would stop a running pipeline over a chmod).
    """
    if config.secret_env:
        value = os.environ.get(config.secret_env, "")
        if value.strip():
            return value.strip().encode("utf-8")
    if config.secret_file:
        path = Path(config.secret_file).expanduser()
        if not path.is_file():
            raise ConfigError(
                "deid.secret_file",
                str(path),
                f"an existing file holding the secret (not found: {path})",
            )
        return _read_secret_file(path)
    path = default_secret_path()
    if path.exists():
        return _read_secret_file(path)
    return _create_secret_file(path)


# --------------------------------------------------------------------------------------
# Pseudonymizer
# --------------------------------------------------------------------------------------


def _parse_private_tag(text: str) -> str:
    tag = re.sub(r"[\s(),]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]{8}", tag) or int(tag[:4], 16) % 2 == 0:
        raise ConfigError(
            "deid.safe_private_tags", text, '"(gggg,eeee)" with an odd (private) group gggg'
        )
    return tag


def _is_private(tag: str) -> bool:
    return int(tag[:4], 16) % 2 == 1


def _repeating_group_action(tag: str) -> str | None:
    """Curve Data (50xx,xxxx), Overlay Data (60xx,3000), Overlay Comments (60xx,4000): X."""
    group = tag[:4]
    if group.startswith("50") and int(group, 16) % 2 == 0:
        return REMOVE
    if group.startswith("60") and int(group, 16) % 2 == 0 and tag[4:] in ("3000", "4000"):
        return REMOVE
    return None


@dataclasses.dataclass(frozen=True)
class _Shift:
    days: int | None  # None: dates are removed


class Pseudonymizer:
    """Keyed pseudonyms and the Annex E profile, pure Python; picklable for Spark executors.

    The secret is never part of ``repr`` (Spark and pytest print objects in error reports).
    """

    def __init__(self, secret: bytes, config: DeidConfig) -> None:
        if not secret:
            raise ValueError("the de-identification secret is empty")
        self._secret = bytes(secret)
        self.config = config
        self._safe_private = frozenset(_parse_private_tag(t) for t in config.safe_private_tags)
        # Private creator elements (gggg,00xx) of the blocks that hold safe tags (gggg,xxee).
        self._safe_creators = frozenset(f"{t[:4]}00{t[4:6]}" for t in self._safe_private)

    def __repr__(self) -> str:
        return f"Pseudonymizer(secret=<{len(self._secret)} bytes>, config={self.config!r})"

    # -- keyed hashes ------------------------------------------------------------------

    def _mac(self, domain: str, *parts: str) -> bytes:
        # Domain separation: a UID, a patient id and a date-shift input never collide.
        message = "\x00".join((domain, *parts)).encode("utf-8")
        return hmac.digest(self._secret, message, hashlib.sha256)

    def uid(self, original: str) -> str:
        """Consistent replacement UID: ``2.25.`` + a 128-bit integer from HMAC-SHA256.

        PS3.5 B.2 allows UIDs under the root 2.25 formed from a UUID as one decimal integer;
        the first 128 bits of the keyed hash are given the UUID version 8 ("custom", RFC 9562)
        and variant bits, so the integer is a well-formed UUID. At most 39 digits: the UID is
        at most 44 characters, with no leading zero in any component. Trailing padding
        (space, NUL) of the original is ignored; an empty original stays empty.
        """
        text = original.strip(" \x00")
        if not text:
            return ""
        value = int.from_bytes(self._mac("uid", text)[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122/9562 variant
        return f"2.25.{value}"

    def patient_key(self, patient_id: str | None, issuer: str | None = None) -> str:
        """Pseudonymous patient key: 32 hex digits of HMAC-SHA256 over Patient ID (0010,0020).

        ``issuer`` is Issuer of Patient ID (0010,0021), which scopes the id when several
        assigning authorities are mixed. :meth:`deidentify_row` does not pass it: sites fill it
        inconsistently across modalities, and one patient split into two keys also gets two
        date shifts. A missing Patient ID gives the key of the empty id (one shared "unknown
        patient"), so such rows still get a stable date shift.
        """
        pid = (patient_id or "").strip(" \x00")
        scope = (issuer or "").strip(" \x00")
        return self._mac("patient", scope, pid).hex()[:32]

    def date_shift_days(self, patient_key: str) -> int:
        """Per-patient date offset in ``[-max_date_shift_days, -1]``: into the past, never 0.

        Keyed by the secret, so the offset cannot be recomputed from the patient key alone.
        """
        span = self.config.max_date_shift_days
        n = int.from_bytes(self._mac("dateshift", patient_key)[:8], "big")
        return -(n % span) - 1

    def _shift(self, patient_key: str) -> _Shift:
        if not self.config.shift_dates:
            return _Shift(None)
        return _Shift(self.date_shift_days(patient_key))

    # -- DICOM JSON --------------------------------------------------------------------

    def _action(self, tag: str) -> str | None:
        """The effective action for a listed tag, options applied; None when not listed."""
        entry = ACTIONS.get(tag)
        if entry is None:
            return _repeating_group_action(tag)
        _, action, option = entry
        cfg = self.config
        if option == PATIENT and cfg.retain_patient_characteristics:
            return KEEP
        if option == DEVICE:
            return KEEP if cfg.keep_device_identity else REMOVE
        if option == DATES and cfg.shift_dates:
            return "C"
        return action

    def _shift_date(self, value: str, days: int) -> str | None:
        text = value.strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
        if len(text) != 8 or not text.isdigit():
            return None
        try:
            day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return None
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d")

    def _shift_datetime(self, value: str, days: int) -> str | None:
        # DT: YYYYMMDD then optional time, fraction and &ZZXX offset, kept verbatim. A partial
        # DT (year or year-month only) cannot be shifted by days and is dropped.
        text = value.strip()
        shifted = self._shift_date(text[:8], days) if len(text) >= 8 else None
        return None if shifted is None else shifted + text[8:]

    def _dates(self, element: dict[str, Any], vr: str, shift: _Shift) -> dict[str, Any] | None:
        values = element.get("Value")
        if shift.days is None:
            return None
        if not values:
            return element
        fn = self._shift_date if vr == "DA" else self._shift_datetime
        out = [v2 for v in values if isinstance(v, str) and (v2 := fn(v, shift.days))]
        return {"vr": vr, "Value": out} if out else {"vr": vr}

    def _uid_value(self, tag: str, value: str) -> str:
        if tag in KEPT_UID_TAGS or value.startswith(_DICOM_UID_ROOT):
            return value
        return self.uid(value)

    def _clean(
        self, doc: dict[str, Any], shift: _Shift, patient_key: str, new_sop: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, element in doc.items():
            tag = tag.upper()
            if not isinstance(element, dict):
                continue  # not DICOM JSON; dropped rather than trusted
            vr = element.get("vr", "UN")
            if tag[4:] == "0000":
                continue  # group lengths: meaningless once values change (PS3.18 F.2.1)
            if _is_private(tag):
                if tag in self._safe_private or tag in self._safe_creators:
                    out[tag] = self._element(tag, element, vr, shift, patient_key, new_sop)
                continue
            action = self._action(tag)
            if action == REMOVE:
                continue
            if action == EMPTY:
                out[tag] = {"vr": vr}
                continue
            if action == DUMMY:
                if tag == TAG_PATIENT_ID:
                    out[tag] = {"vr": vr, "Value": [patient_key]}
                elif vr != "SQ":
                    out[tag] = {"vr": vr}
                continue
            if action == KEEP and vr not in ("SQ", "UI", *_DATE_VRS):
                out[tag] = element
                continue
            if action is None and vr in _ALWAYS_REMOVED_VRS:
                if _ALWAYS_REMOVED_VRS[vr] == EMPTY:
                    out[tag] = {"vr": vr}
                continue
            if action is None and vr == "TM":
                out[tag] = element  # not listed: kept (see module docstring)
                continue
            if action == "C" and vr == "TM":
                out[tag] = element  # whole-day shift: the time of day stays true
                continue
            cleaned = self._element(tag, element, vr, shift, patient_key, new_sop)
            if cleaned is not None:
                out[tag] = cleaned
        return out

    def _element(
        self,
        tag: str,
        element: dict[str, Any],
        vr: str,
        shift: _Shift,
        patient_key: str,
        new_sop: str,
    ) -> dict[str, Any] | None:
        """Generic per-VR handling of an element the table keeps (or does not list)."""
        if "BulkDataURI" in element:
            # The URI names the source file (and so maybe the patient): point it at the
            # pseudonymised instance instead.
            return {"vr": vr, "BulkDataURI": f"deid:{new_sop}#{tag}"}
        if vr == "SQ":
            items = element.get("Value") or []
            return {
                "vr": vr,
                "Value": [
                    self._clean(item, shift, patient_key, new_sop)
                    for item in items
                    if isinstance(item, dict)
                ],
            }
        if vr == "UI":
            values = element.get("Value")
            if not values:
                return element
            return {
                "vr": vr,
                "Value": [self._uid_value(tag, v) if isinstance(v, str) else v for v in values],
            }
        if vr in _DATE_VRS:
            return self._dates(element, vr, shift)
        if vr in _ALWAYS_REMOVED_VRS:
            return {"vr": vr} if _ALWAYS_REMOVED_VRS[vr] == EMPTY else None
        return element

    def _method_marks(self) -> dict[str, Any]:
        cfg = self.config
        codes = [CODE_BASIC_PROFILE]
        names = ["DICOM PS3.15 E Basic Application Confidentiality Profile"]
        if cfg.shift_dates:
            codes.append(CODE_MODIFIED_DATES)
            names.append("Retain Longitudinal Temporal Info Modified Dates")
        if cfg.retain_patient_characteristics:
            codes.append(CODE_PATIENT_CHARACTERISTICS)
            names.append("Retain Patient Characteristics")
        if cfg.keep_device_identity:
            # Retains station, manufacturer and model; serial numbers are removed regardless.
            codes.append(CODE_DEVICE_IDENTITY)
            names.append("Retain Device Identity (no serial numbers)")
        if self._safe_private:
            codes.append(CODE_SAFE_PRIVATE)
            names.append("Retain Safe Private")
        names.append("medspark deid v1")
        marks: dict[str, Any] = {
            TAG_IDENTITY_REMOVED: {"vr": "CS", "Value": ["YES"]},
            # LO, VM 1-n: one value per profile/option, each within LO's 64 characters.
            TAG_DEID_METHOD: {"vr": "LO", "Value": names},
            TAG_DEID_METHOD_CODES: {
                "vr": "SQ",
                "Value": [
                    {
                        "00080100": {"vr": "SH", "Value": [code]},
                        "00080102": {"vr": "SH", "Value": ["DCM"]},
                        "00080104": {"vr": "LO", "Value": [meaning]},
                    }
                    for code, meaning in codes
                ],
            },
            TAG_LONGITUDINAL_MODIFIED: {
                "vr": "CS",
                "Value": ["MODIFIED" if cfg.shift_dates else "REMOVED"],
            },
        }
        return marks

    def deidentify_dataset_json(self, header_json: str, patient_key: str) -> str:
        """Apply the profile to one DICOM JSON document (PS3.18 Annex F), sequences included.

        Listed attributes get their Table E.1-1 action (see :data:`ACTIONS` and the module
        docstring); instance UIDs are replaced with :meth:`uid`; dates are shifted by the
        patient's :meth:`date_shift_days` (or removed); private attributes are removed unless
        safe; bulk-data URIs point at the pseudonymised SOP Instance UID. The result is marked
        with Patient Identity Removed (0012,0062) "YES", De-identification Method (0012,0063)
        and Code Sequence (0012,0064) (CID 7050), and Longitudinal Temporal Information
        Modified (0028,0303) "MODIFIED" (dates shifted) or "REMOVED".
        """
        doc = json.loads(header_json)
        if not isinstance(doc, dict):
            raise ValueError("header_json is not a DICOM JSON object")
        sop = _first_value(doc, TAG_SOP_INSTANCE_UID) or _first_value(
            doc, TAG_MEDIA_SOP_INSTANCE_UID
        )
        new_sop = self.uid(sop) if sop else "unknown"
        out = self._clean(doc, self._shift(patient_key), patient_key, new_sop)
        out.update(self._method_marks())
        return json.dumps(out, sort_keys=True, separators=(",", ":"))

    # -- scans rows --------------------------------------------------------------------

    def deidentify_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """One ``scans`` row (typed columns + ``header_json``) de-identified; a new dict.

        ``patient_id`` becomes the patient key; the instance/series/study UIDs are replaced
        with :meth:`uid` (the same values as in the JSON); ``study_date``, ``study_datetime``
        and ``acquisition_datetime`` are shifted by the patient's offset (``None`` when dates
        are removed, and then ``study_time`` too, as Study Time (0008,0030) is Z in E.1-1);
        ``institution_name`` is removed (Institution Name (0008,0080), X/Z/D); station,
        manufacturer and model are kept unless ``keep_device_identity`` is off. Columns that
        carry no identity pass through, ``source_uri`` and ``archive_member`` included (see
        :data:`PASSTHROUGH_COLUMNS` for the risk). Any other column raises ``ValueError``: an
        unclassified column must not reach an analyst table by default.
        """
        unknown = sorted(set(row) - PASSTHROUGH_COLUMNS - HANDLED_COLUMNS)
        if unknown:
            raise ValueError(
                f"de-identification does not know the column(s) {unknown}; classify them in "
                "medspark.dicom.deid before writing them to an analyst table"
            )
        out = dict(row)
        key = self.patient_key(row.get("patient_id"))
        if "patient_id" in row:
            out["patient_id"] = key if row["patient_id"] is not None else None
        for column in UID_COLUMNS:
            if row.get(column) is not None:
                out[column] = self.uid(row[column])
        shift = self._shift(key)
        for column in ("study_date", "study_datetime", "acquisition_datetime"):
            if column in row:
                value = row[column]
                if value is None or shift.days is None:
                    out[column] = None
                else:
                    out[column] = value + dt.timedelta(days=shift.days)
        if "study_time" in row and shift.days is None:
            out["study_time"] = None
        if "institution_name" in row:
            out["institution_name"] = None
        if not self.config.keep_device_identity:
            for column in DEVICE_COLUMNS:
                if column in row:
                    out[column] = None
        if row.get("header_json") is not None:
            out["header_json"] = self.deidentify_dataset_json(row["header_json"], key)
        return out

    def phi_map_rows(self, row: dict[str, Any]) -> list[tuple[str, str, str]]:
        """``(kind, original, pseudonym)`` for the patient id and the three instance UIDs."""
        out: list[tuple[str, str, str]] = []
        if row.get("patient_id") is not None:
            out.append(("patient_id", row["patient_id"], self.patient_key(row["patient_id"])))
        for column in UID_COLUMNS:
            if row.get(column):
                out.append((column, row[column], self.uid(row[column])))
        return out


def _first_value(doc: dict[str, Any], tag: str) -> str | None:
    element = doc.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if values and isinstance(values[0], str):
            return values[0]
    return None


def pseudonymizer_from_config(config: DeidConfig) -> Pseudonymizer | None:
    """The :class:`Pseudonymizer` for ``config``, or None when de-identification is disabled.

    Resolves the secret on the driver (it may create the secret file): call it once per job.
    """
    if not config.enabled:
        return None
    return Pseudonymizer(resolve_secret(config), config)


# --------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------


def _map_batches(
    fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], schema: Any
) -> Callable[[Iterator[Any]], Iterator[Any]]:
    def run(batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        arrow_schema = None
        for batch in batches:
            rows = [out for row in batch.to_pylist() for out in fn(row)]
            if arrow_schema is None:
                arrow_schema = schema if isinstance(schema, pa.Schema) else batch.schema
            yield pa.RecordBatch.from_pylist(rows, schema=arrow_schema)

    return run


def deidentify_scans(scans: DataFrame, pseudonymizer: Pseudonymizer | None = None) -> DataFrame:
    """``scans`` with :meth:`Pseudonymizer.deidentify_row` applied to every row; same schema.

    ``pseudonymizer`` None means de-identification is disabled: ``scans`` is returned as is.
    Columns are checked on the driver first, so an unclassified column fails the job before
    any task runs. Uses ``mapInArrow`` rather than ``mapInPandas``: Arrow's ``to_pylist`` gives
    exactly the Python values :func:`~medspark.dicom.header.parse_header` produces (``date``,
    naive ``datetime``, ``None``), while pandas would turn null integers into NaN floats and
    timestamps into ``pd.Timestamp``. The pseudonymizer, secret included, travels to executors
    in the task closure.
    """
    if pseudonymizer is None:
        return scans
    unknown = sorted(set(scans.columns) - PASSTHROUGH_COLUMNS - HANDLED_COLUMNS)
    if unknown:
        raise ValueError(
            f"de-identification does not know the column(s) {unknown}; classify them in "
            "medspark.dicom.deid before writing them to an analyst table"
        )
    p = pseudonymizer
    return scans.mapInArrow(_map_batches(lambda row: [p.deidentify_row(row)], None), scans.schema)


PHI_MAP_COLUMNS = ("kind", "original", "pseudonym")


def phi_map(scans_raw: DataFrame, pseudonymizer: Pseudonymizer) -> DataFrame:
    """``(kind, original, pseudonym)`` rows for ``restricted_phi_map``, distinct.

    ``scans_raw`` is the table before :func:`deidentify_scans`. Kinds: ``patient_id``,
    ``sop_instance_uid``, ``study_instance_uid``, ``series_instance_uid``. The date shift of a
    patient is not stored: whoever may re-identify holds the secret and recomputes it with
    :meth:`Pseudonymizer.date_shift_days`.
    """
    import pyarrow as pa
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType(
        [
            StructField("kind", StringType(), False),
            StructField("original", StringType(), False),
            StructField("pseudonym", StringType(), False),
        ]
    )
    arrow_schema = pa.schema(
        [pa.field(name, pa.string(), nullable=False) for name in PHI_MAP_COLUMNS]
    )
    p = pseudonymizer

    def rows(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(zip(PHI_MAP_COLUMNS, r, strict=True)) for r in p.phi_map_rows(row)]

    needed = [c for c in ("patient_id", *UID_COLUMNS) if c in scans_raw.columns]
    return scans_raw.select(*needed).mapInArrow(_map_batches(rows, arrow_schema), schema).distinct()
